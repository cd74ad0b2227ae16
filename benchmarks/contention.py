"""CPU runs on a busy machine: the thread policy (``starft_cli.threads``) against torch's defaults.

Three fixed CPU workloads, each a whole ``starft`` process timed from start to exit:

* ``demo-step``: ``starft finetune`` of the demo's zero-shot model on ``spurious-digits``, FLYP, one epoch
  (12 steps at batch 64, no workers);
* ``zero-shot-eval``: ``starft eval`` of the demo's zero-shot model on the 1,350 test images (no feature cache);
* ``vit-b-16-step``: three FLYP steps of a randomly initialised ViT-B-16 at batch 8 (224 px).

Each runs alone and beside K busy competitor processes (each a single-threaded Python loop: a browser tab, a
second job), with two policies: ``old`` (``STARFT_THREADS=torch``: torch's defaults, every core's worth of
threads spinning at OpenMP barriers) and ``new`` (the default policy: passive waiting, threads = usable cores).
Policies alternate within each round; figures are medians over ``--repeats`` rounds. Printed: each policy's
median seconds, ``new/old`` at each K (goal alone: at most 1.05), and each policy's slowdown beside K busy
processes against itself alone (goals: at most 2x at K = cores and 3x at K = cores + 1, about the fair share).

    python benchmarks/contention.py [--repeats 3] [--busy 0,1,2,3] [--workloads demo-step,zero-shot-eval,vit-b-16-step]
        [--policy NAME=VAR=VALUE[,VAR=VALUE]]   # extra policies to compare, e.g. one=STARFT_THREADS=1

The default K list is 0 .. cores + 1 (0,1,2,3 on 2 cores). Run it on an otherwise idle machine: other work
counts as competitors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES: dict[str, dict[str, str]] = {"old": {"STARFT_THREADS": "torch"}, "new": {}}
WORKLOADS = ("demo-step", "zero-shot-eval", "vit-b-16-step")


def command(workload: str, out: Path) -> list[str]:
    cli = [sys.executable, "-m", "starft_cli"]
    if workload == "demo-step":
        return [
            *cli,
            "finetune",
            "--backbone",
            "starft-demo-zero-shot",
            "--data",
            "spurious-digits",
            "--method",
            "flyp",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--lr",
            "1e-4",
            "--warmup",
            "10",
            "--workers",
            "0",
            "--out",
            str(out / "run"),
        ]
    if workload == "zero-shot-eval":
        return [
            *cli,
            "eval",
            "--model",
            "starft-demo-zero-shot",
            "--data",
            "spurious-digits",
            "--split",
            "test",
            "--no-cache",
            "--workers",
            "0",
            "--out",
            str(out / "eval"),
        ]
    if workload == "vit-b-16-step":
        return [sys.executable, str(Path(__file__).resolve()), "--child", "vit-b-16-step"]
    raise SystemExit(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")


def vit_b_16_step() -> None:
    """The child for ``vit-b-16-step``: the thread policy first (as the CLI's entry point does), then torch."""
    from starft_cli.threads import apply_thread_policy

    apply_thread_policy()
    import torch
    from open_clip.loss import ClipLoss

    from starft_cli.models import load

    loaded = load("ViT-B-16:none", device="cpu", seed=0)
    model = loaded.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 224, 224, generator=g)
    texts = loaded.tokenizer([f"a photo of a class {i}." for i in range(8)])
    loss_fn = ClipLoss()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        loss.backward()
        opt.step()


def busy(k: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(k)
    ]


def run_once(workload: str, env: dict[str, str]) -> float:
    out = Path(tempfile.mkdtemp(prefix="starft-contention-"))
    try:
        start = time.perf_counter()
        proc = subprocess.run(command(workload, out), env=env, cwd=ROOT, capture_output=True, text=True)
        took = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{workload} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return took


def parse_policy(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("=")
    env = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        env[key] = value
    return name, env


def main() -> None:
    from starft_cli.threads import usable_cores

    cores = usable_cores()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", default=",".join(str(k) for k in range(cores + 2)))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--policy", action="append", default=[], help="NAME=VAR=VALUE[,VAR=VALUE]: another policy")
    ap.add_argument("--only", default="old,new", help="the policies to run, in this order")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "vit-b-16-step":
        vit_b_16_step()
        return
    policies = {name: env for name, env in POLICIES.items() if name in args.only.split(",")}
    policies.update(dict(parse_policy(p) for p in args.policy))
    ks = [int(k) for k in args.busy.split(",")]
    workloads = args.workloads.split(",")

    home = Path(tempfile.mkdtemp(prefix="starft-contention-home-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_", "STARFT_T"))}
    base.update({"STARFT_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    print(f"{cores} usable cores; K busy = {ks}; {args.repeats} rounds; policies {', '.join(policies)}", flush=True)
    for workload in workloads:  # builds the demo data and model into the temporary home, untimed
        run_once(workload, {**base, **next(iter(policies.values()))})
    times: dict[tuple[str, str, int], list[float]] = {}
    try:
        for k in ks:
            for _ in range(args.repeats):
                competitors = busy(k)
                try:
                    time.sleep(0.3)
                    for workload in workloads:
                        for name, env in policies.items():
                            times.setdefault((workload, name, k), []).append(run_once(workload, {**base, **env}))
                finally:
                    for p in competitors:
                        p.kill()
                        p.wait()
            print(f"  K={k} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    med = {key: statistics.median(v) for key, v in times.items()}
    names = list(policies)
    header = ["workload", "K busy", *[f"{n} s" for n in names]]
    if "old" in names and "new" in names:
        header.append("new/old")
    header += [f"{n} vs alone" for n in names]
    rows = []
    for workload in workloads:
        for k in ks:
            row = [workload, str(k), *[f"{med[(workload, n, k)]:.1f}" for n in names]]
            if "old" in names and "new" in names:
                row.append(f"{med[(workload, 'new', k)] / med[(workload, 'old', k)]:.2f}")
            row += [f"{med[(workload, n, k)] / med[(workload, n, ks[0])]:.2f}x" for n in names]
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"(medians of {args.repeats} whole-process runs; 'vs alone' = against the same policy at K={ks[0]})")


if __name__ == "__main__":
    main()
