"""What `starft probe` costs next to `starft eval` of the same model on the same data, both with warm caches.

    python benchmarks/probe_cost.py [--runs 5] [--model DIR --reference REF --data NAME|folder:PATH [--split S]]

Default pair: a perturbed copy of ``starft-tiny`` (saved to a temporary folder) probed against ``starft-tiny:none``
on the embedded ``spurious-digits`` test split (generated on first use), pool ``digits``. Both commands run first
once to fill the caches (image features, zero-shot head, spurious-text banks); then, alternately, ``--runs`` times
each, measured two ways, medians printed side by side with their ratio (the target is probe <= 1.2x eval):

* CLI: ``starft eval --model M --data D`` and ``starft probe --model M --reference R --data D`` as subprocesses
  (what a user waits for: interpreter start, imports, model loading, cache reads, the computation);
* in process: ``starft_cli.eval.runner.evaluate`` and ``starft_cli.probe.probe`` with the model references as
  strings (model loading included, imports not).

The probe loads two models (the model and its reference) where eval loads one; both read image features from the
same evaluation cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def perturbed_copy(folder: Path) -> Path:
    import torch

    from starft_cli.models import load, save_checkpoint

    loaded = load("starft-tiny:none")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_checkpoint(loaded.model, folder, loaded.model_cfg, loaded.preprocess_cfg, arch="starft-tiny")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default=None, help="model to probe (default: a perturbed starft-tiny)")
    parser.add_argument("--reference", default="starft-tiny:none")
    parser.add_argument("--data", default="spurious-digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--pool", default="digits")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry
    from starft_cli.probe import probe

    tmp = Path(tempfile.mkdtemp(prefix="probe-cost-"))
    model = args.model or str(perturbed_copy(tmp / "perturbed"))
    common = ["--data", args.data, "--split", args.split, "--device", args.device, "--workers", "0"]
    if args.data_root:
        common += ["--data-root", args.data_root]
    exe = [sys.executable, "-m", "starft_cli"]
    eval_cmd = [*exe, "eval", "--model", model, *common, "--metric", "top1"]
    probe_cmd = [*exe, "probe", "--model", model, "--reference", args.reference, "--pool", args.pool, *common]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    suite = Suite("custom", (SuiteEntry(args.data, ("top1",), split=args.split),))

    def cli(cmd: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    def run_eval() -> float:
        started = time.perf_counter()
        evaluate([model], suite, args.data_root, device=args.device)
        return time.perf_counter() - started

    def run_probe() -> float:
        started = time.perf_counter()
        probe([model], args.reference, args.data, args.data_root, args.split, [args.pool], device=args.device)
        return time.perf_counter() - started

    cli(eval_cmd), cli(probe_cmd), run_eval(), run_probe()  # fill every cache
    times: dict[str, list[float]] = {k: [] for k in ("cli eval", "cli probe", "api eval", "api probe")}
    for _ in range(args.runs):
        times["cli eval"].append(cli(eval_cmd))
        times["cli probe"].append(cli(probe_cmd))
        times["api eval"].append(run_eval())
        times["api probe"].append(run_probe())
    med = {k: statistics.median(v) for k, v in times.items()}
    from starft_cli.data.registry import load_dataset

    n = len(load_dataset(args.data, args.data_root, args.split))
    print(f"{model} vs {args.reference} on {args.data} ({args.split}, {n} images), pool {args.pool}, warm caches, ")
    print(f"medians of {args.runs} runs, {args.device}")
    print("| how | eval (s) | probe (s) | probe / eval |")
    print("|---|---|---|---|")
    for how in ("cli", "api"):
        e, p = med[f"{how} eval"], med[f"{how} probe"]
        print(f"| {'CLI (subprocess)' if how == 'cli' else 'in process'} | {e:.2f} | {p:.2f} | {p / e:.2f}x |")


if __name__ == "__main__":
    main()
