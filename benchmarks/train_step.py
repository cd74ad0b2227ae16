"""Efficient StarFT step vs the straightforward four-forward step: time per optimizer step and memory.

Same model, batch, templates and optimizer for both; the two are run alternately and the median of several
runs is compared. Memory: peak CUDA allocation on a GPU; on CPU the bytes autograd saves for backward
(the activation memory a step holds at its peak).

    python benchmarks/train_step.py [--arch starft-small] [--batch 64] [--classes 100] [--runs 7] [--device cpu]
        [--context-length 77]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's starft_cli

from starft_cli.models import load
from starft_cli.prompts import load_pool
from starft_cli.train.bank import build_bank, class_captions
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods import make_method
from starft_cli.train.step import StarStep, Towers, template_indices


def make(arch: str, impl: str, freeze_text: bool, classes: list[str], device: torch.device):
    loaded = load(f"{arch}:none", device=device, seed=0)
    student = loaded.model.train()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    if freeze_text:
        for name, p in student.named_parameters():
            if not (name.startswith("visual.") or name.startswith("logit_")):
                p.requires_grad_(False)
    pool = load_pool("background")
    bank = (
        build_bank(teacher, loaded.tokenizer, classes, "a photo of a {}.", pool, device)
        if impl == "efficient"
        else None
    )
    step = StarStep(
        towers=Towers(student, trim=impl == "efficient"),
        clip=student,
        teacher=teacher,
        tokenizer=loaded.tokenizer,
        pool=pool,
        method=make_method("starft"),
        freeze_text=freeze_text,
        impl=impl,
        bank=bank,
    )
    params = [p for p in student.parameters() if p.requires_grad]
    return step, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1), loaded


def with_context_length(arch: str, context_length: int) -> str:
    """Register a copy of ``arch`` whose text tower has another context length; return its name."""
    import json
    import tempfile

    import open_clip

    from starft_cli.models import register_builtin_configs

    register_builtin_configs()
    cfg = json.loads(json.dumps(open_clip.get_model_config(arch)))
    cfg["text_cfg"]["context_length"] = context_length
    name = f"{arch}-ctx{context_length}"
    folder = Path(tempfile.mkdtemp())
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return name


def one_step(step, opt, images, labels, captions, tidx) -> int:
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step(images, labels, captions, tidx, 0.5, True)
    out.loss.backward()
    opt.step()
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="starft-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="give the architecture this text context (real CLIP models have 77; starft-small has 32)",
    )
    args = ap.parse_args()
    if args.context_length is not None:
        args.arch = with_context_length(args.arch, args.context_length)
    device = torch.device(args.device)
    classes = [f"class number {i}" for i in range(args.classes)]
    g = torch.Generator().manual_seed(0)
    for freeze_text in (False, True):
        setups = {
            impl: make(args.arch, impl, freeze_text, classes, device) for impl in ("straightforward", "efficient")
        }
        size = setups["efficient"][2].preprocess_cfg["size"]
        size = size[0] if isinstance(size, list) else size
        images = torch.randn(args.batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(args.classes, (args.batch,), generator=g).to(device)
        caps = [class_captions(classes, "a photo of a {}.")[i] for i in labels.tolist()]
        pool_size = len(setups["efficient"][0].pool)
        times: dict[str, list[float]] = {k: [] for k in setups}
        memory: dict[str, int] = {}
        for run in range(args.runs + 1):  # the first round warms up
            for impl, (step, opt, _) in setups.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for k in range(args.steps):
                    tidx = template_indices(0, run * args.steps + k, 0, args.batch, pool_size, DistEnv()).to(device)
                    saved = one_step(step, opt, images, labels, caps, tidx)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    memory[impl] = torch.cuda.max_memory_allocated()
                else:
                    memory[impl] = saved
                if run:
                    times[impl].append((time.perf_counter() - start) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        what = "peak CUDA memory" if device.type == "cuda" else "autograd saved bytes"
        print(
            f"{args.arch} batch {args.batch} classes {args.classes} freeze_text={freeze_text}: "
            f"straightforward {med['straightforward'] * 1e3:.1f} ms, efficient {med['efficient'] * 1e3:.1f} ms, "
            f"ratio {med['efficient'] / med['straightforward']:.3f} (median of {args.runs}); "
            f"{what} {memory['straightforward'] / 2**20:.1f} -> {memory['efficient'] / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
