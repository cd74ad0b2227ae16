"""Each fine-tuning method's optimizer-step time and memory relative to FLYP, side by side in one run.

Every method is set up by the real training engine (the loop's set-up phase: teacher, head, bank, per-run
constants, optimizer) on the same synthetic batch, and its real optimizer step (``_Trainer._optimizer_step``:
forward, backward, weight penalty, AdamW, the method's end-of-step hook) is timed. The methods run in turn within
each round, so that drift of the machine hits them all alike; the median over rounds is reported. Memory: peak
CUDA allocation on a GPU; on CPU the bytes autograd saves for backward (the activation memory a step holds at
its peak).

The lower bound of a method regularised against a second model (the frozen zero-shot teacher, or CaRot's EMA
teacher) is FLYP's step plus one teacher image forward (text features of a frozen tower are per-run or per-step
constants): the ``vs bound`` column says how close each method gets.

    python benchmarks/method_cost.py [--arch starft-small] [--batch 64] [--runs 5] [--steps 2] [--device cpu]
        [--methods all|LIST]
    python benchmarks/method_cost.py --arch ViT-B-16 --batch 8 --classes 10 --runs 3 --steps 1 --sequential
        # the ViT-B/16 shape; --sequential holds one method's models at a time (memory), measured one after another
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's starft_cli

from starft_cli.train.checkpoint import RunDir
from starft_cli.train.config import TrainConfig
from starft_cli.train.distributed import DistEnv
from starft_cli.train.loop import Prepared, _Plan, _Trainer
from starft_cli.train.methods import Method, available


class Synthetic:
    """A dataset as the engine sees it before loading images: class names, labels, no captions."""

    def __init__(self, classes: int, n: int) -> None:
        self.classnames = [f"class number {i}" for i in range(classes)]
        self.labels = [i % classes for i in range(n)]
        self.captions = None
        self.templates = None

    def __len__(self) -> int:
        return len(self.labels)


def trainer(method: str, arch: str, batch: int, data: Synthetic, device: torch.device, tmp: Path) -> _Trainer:
    from starft_cli.prompts import load_pool
    from starft_cli.train.methods import get_method

    cfg = TrainConfig(
        backbone=f"{arch}:none", data="synthetic", method=method, batch_size=batch, workers=0, out=str(tmp / method),
        device=str(device),
    )  # fmt: skip
    pool = load_pool(cfg.pool) if get_method(method).needs_pool else []
    prepared = Prepared(cfg, RunDir(cfg.out), data, None, pool, None)
    t = _Trainer(prepared, DistEnv(), device, None)
    t._setup(_Plan(batch, 100, 1000), None)
    from starft_cli.data.pipeline import batch_normalizer

    t.normalize = batch_normalizer(t.base.preprocess_cfg)
    return t


def step_once(t: _Trainer, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], step: int) -> int:
    """One optimizer step of ``t`` on ``batch``; the bytes autograd saved for backward."""
    saved = 0

    def pack(x: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += x.numel() * x.element_size()
        return x

    lam = t.cfg.reg_lambda if t.method.regularized else 0.0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        _, bad = t._optimizer_step(iter([batch] * t.cfg.grad_accum), step, float(lam or 0.0))
    assert bad is None, f"{t.cfg.method}: non-finite step"
    return saved


def teacher_forward(t: _Trainer, images: torch.Tensor) -> None:
    with torch.no_grad():
        t.towers.clip.encode_image(t.normalize(images), normalize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="starft-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per timed run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="all")
    ap.add_argument(
        "--sequential", action="store_true", help="set up and time one method at a time (large models: memory)"
    )
    args = ap.parse_args()
    import tempfile

    torch.manual_seed(0)
    device = torch.device(args.device)
    names = list(available()) if args.methods == "all" else args.methods.split(",")
    if "flyp" not in names:
        names.insert(0, "flyp")
    data = Synthetic(args.classes, 10 * args.batch)
    tmp = Path(tempfile.mkdtemp())
    trainers: dict[str, Any] = {m: None for m in names}
    if not args.sequential:
        trainers = {m: trainer(m, args.arch, args.batch, data, device, tmp) for m in names}
    probe = trainers["flyp"] or trainer("flyp", args.arch, args.batch, data, device, tmp)
    size = probe.base.preprocess_cfg["size"]
    size = size[0] if isinstance(size, list | tuple) else size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(args.classes, (args.batch,), generator=g)
    batch = (images, labels, torch.arange(args.batch))
    times: dict[str, list[float]] = {m: [] for m in [*names, "teacher-forward"]}
    memory: dict[str, int] = {}

    def timed(fn: Any) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    def measure(m: str, t: _Trainer, run: int) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out: list[int] = []
        elapsed = timed(lambda: out.extend(step_once(t, batch, run * args.steps + k) for k in range(args.steps)))
        memory[m] = torch.cuda.max_memory_allocated() if device.type == "cuda" else out[-1]
        if run:  # round 0 warms up
            times[m].append(elapsed)

    def measure_teacher(run: int) -> None:
        elapsed = timed(lambda: [teacher_forward(probe, images) for _ in range(args.steps)])
        if run:
            times["teacher-forward"].append(elapsed)

    if args.sequential:
        for run in range(args.runs + 1):
            measure_teacher(run)
        del probe, trainers
        for m in names:
            t = trainer(m, args.arch, args.batch, data, device, tmp)
            for run in range(args.runs + 1):
                measure(m, t, run)
            del t
    else:
        for run in range(args.runs + 1):  # the methods in turn within each round
            for m, t in trainers.items():
                measure(m, t, run)
            measure_teacher(run)
    med = {k: statistics.median(v) for k, v in times.items()}
    flyp, bound = med["flyp"], med["flyp"] + med["teacher-forward"]
    what = "peak CUDA MiB" if device.type == "cuda" else "saved MiB"
    order = "one method after another" if args.sequential else "methods in turn within each round"
    print(
        f"{args.arch}, batch {args.batch}, {args.classes} classes, {device}: median of {args.runs} runs of "
        f"{args.steps} step(s), {order}; teacher image forward {med['teacher-forward'] * 1e3:.1f} ms"
    )
    print(f"| method | step (ms) | time vs FLYP | vs bound (FLYP + teacher fwd) | {what} | memory vs FLYP |")
    print("|---|---|---|---|---|---|")
    for m in names:
        cls = available()[m]
        # a second model's image forward: the frozen teacher's, or an EMA teacher's (CaRot's teacher_features)
        second = cls.needs_teacher or cls.teacher_features is not Method.teacher_features
        vs_bound = f"{med[m] / bound:.2f}" if second else "-"
        print(
            f"| {m} | {med[m] * 1e3:.1f} | {med[m] / flyp:.2f} | {vs_bound} | {memory[m] / 2**20:.1f} | "
            f"{memory[m] / max(memory['flyp'], 1):.2f} |"
        )


if __name__ == "__main__":
    main()
