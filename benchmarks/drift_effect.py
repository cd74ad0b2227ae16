"""Does spurious drift predict worst-group accuracy on the demo benchmark?

    python benchmarks/drift_effect.py --seeds 0,1,2 --methods all --out /tmp/toy

Runs `starft demo` once per seed (as benchmarks/toy_effect.py does; finished runs and evaluations are reused), then
prints per method the mean ± std over seeds of the spurious drift from the zero-shot model (digits pool, balanced
test split, `starft probe`'s definition, in nats) next to worst-group and average accuracy, and the Spearman rank
correlation between drift and worst-group accuracy over the fine-tuned methods x seeds (the zero-shot model, whose
drift is 0 by definition, is left out of the correlation; the correlation with it is printed too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma list of fine-tuning seeds (default 0,1,2)")
    parser.add_argument("--methods", default="all", help="comma list of demo methods, or all (default)")
    parser.add_argument("--out", default="toy-effect", help="folder for the per-seed demo outputs")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from starft_cli.demo import DRIFT_POOL, ZERO_SHOT, DemoConfig, parse_methods, run_demo

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = parse_methods(args.methods)
    drift_metric = f"spurious_drift[{DRIFT_POOL}]"
    points: dict[tuple[str, int], dict[str, float]] = {}
    started = time.monotonic()
    for seed in seeds:
        config = DemoConfig(out=Path(args.out) / f"seed{seed}", seed=seed, methods=methods, device=args.device)
        frame = run_demo(config, progress=None).frame
        test = frame[frame["split"] == "test"]
        for model in [ZERO_SHOT, *methods]:
            rows = test[test["model"] == model].set_index("metric")["value"]
            points[(model, seed)] = {
                "drift": float(rows[drift_metric]),
                "worst": float(rows["worst_group_acc"]),
                "avg": float(rows["top1"]),
            }
        print(f"seed {seed} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    def cell(model: str, key: str, scale: float, digits: int) -> str:
        xs = [scale * points[(model, s)][key] for s in seeds]
        spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.{digits}f} ± {spread:.{digits}f}"

    print(f"spurious-digits test split, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean ± std over seeds")
    print(f"| method | drift[{DRIFT_POOL}] (nats) | worst-group acc (%) | avg acc (%) |")
    print("|---|---|---|---|")
    for model in [ZERO_SHOT, *methods]:
        print(
            f"| {model} | {cell(model, 'drift', 1, 4)} | {cell(model, 'worst', 100, 1)} "
            f"| {cell(model, 'avg', 100, 1)} |"
        )
    for label, models in (("fine-tuned methods", methods), ("with the zero-shot model", [ZERO_SHOT, *methods])):
        keys = [(m, s) for m in models for s in seeds]
        rho, p = spearmanr([points[k]["drift"] for k in keys], [points[k]["worst"] for k in keys])
        print(f"Spearman rho(drift, worst-group acc) over {label} x seeds (n = {len(keys)}): {rho:+.3f} (p = {p:.3g})")
    for seed in seeds:
        print(
            f"seed {seed}: "
            + ", ".join(
                f"{m} {points[(m, seed)]['drift']:.4f}/{100 * points[(m, seed)]['worst']:.1f}"
                for m in [ZERO_SHOT, *methods]
            )
        )


if __name__ == "__main__":
    main()
