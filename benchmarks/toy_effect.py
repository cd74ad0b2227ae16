"""What each fine-tuning method does on the demo benchmark, over several seeds: mean and spread.

    python benchmarks/toy_effect.py --seeds 0,1,2 --methods all --out /tmp/toy

Runs `starft demo` once per seed (the zero-shot model is built once and shared: the seeds vary the fine-tuning
data order and crops), then prints, per method, the mean and standard deviation over seeds of the in-distribution
accuracy (biased val split), the average, worst-group and mean-group accuracy and ECE (balanced test split) and the
spurious drift from the zero-shot model (`starft probe`'s measure, digits pool, test split, in nats), how many seeds
the method beat FLYP's worst-group accuracy on, each method's worst-group accuracy per seed, and the Spearman rank
correlation between drift and worst-group accuracy over the fine-tuned methods x seeds (and with the zero-shot
model, whose drift is 0 by definition).
Finished runs and evaluations are reused, so a second call only prints. The row ``starft-discovered`` is StarFT
with the pool ``starft pool discover`` finds in the train split (``--methods starft,starft-discovered`` compares it
with the hand-written ``digits`` pool).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# column title, split, metric, scale, decimals
ROWS = (
    ("ID acc %", "val", "top1", 100, 1),
    ("avg acc %", "test", "top1", 100, 1),
    ("worst-group %", "test", "worst_group_acc", 100, 1),
    ("mean-group %", "test", "mean_group_acc", 100, 1),
    ("ECE %", "test", "ece", 100, 1),
    ("drift (nats)", "test", "spurious_drift[digits]", 1, 4),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma list of fine-tuning seeds (default 0,1,2)")
    parser.add_argument("--methods", default="all", help="comma list of demo methods, or all (default)")
    parser.add_argument("--out", default="toy-effect", help="folder for the per-seed demo outputs")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from starft_cli.demo import METHODS, ZERO_SHOT, DemoConfig, parse_methods, run_demo

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = parse_methods(args.methods)
    values: dict[tuple[str, str, str], list[float]] = {}
    started = time.monotonic()
    for seed in seeds:
        config = DemoConfig(out=Path(args.out) / f"seed{seed}", seed=seed, methods=methods, device=args.device)
        result = run_demo(config, progress=None)
        for record in result.frame.to_dict("records"):
            values.setdefault((record["model"], record["split"], record["metric"]), []).append(float(record["value"]))
        print(f"seed {seed} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    def cell(model: str, split: str, metric: str, scale: float, decimals: int) -> str:
        xs = [scale * v for v in values.get((model, split, metric), [])]
        if not xs:
            return "-"
        spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.{decimals}f} ± {spread:.{decimals}f}"

    models = [ZERO_SHOT, *methods]
    flyp = values.get(("flyp", "test", "worst_group_acc"))
    header = ["method", *[r[0] for r in ROWS], "worst-group > FLYP"]
    print(f"spurious-digits, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean ± std over seeds")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in models:
        wins = "-"
        mine = values.get((model, "test", "worst_group_acc"))
        if flyp and mine and model != "flyp":
            wins = f"{sum(a > b for a, b in zip(mine, flyp, strict=True))}/{len(mine)}"
        print("| " + " | ".join([model, *[cell(model, *row[1:]) for row in ROWS], wins]) + " |")
    for model in methods:
        print(f"- {model}: {METHODS[model].doc}")
    # per seed, so a row can be read against another's seed range (e.g. starft-discovered against starft)
    for model in models:
        seeds_wga = values.get((model, "test", "worst_group_acc"), [])
        print(f"  worst-group per seed, {model}: " + ", ".join(f"{100 * v:.1f}" for v in seeds_wga))
    drift = ROWS[-1][2]
    for label, group in (("fine-tuned methods", methods), ("with the zero-shot model", models)):
        xs = [x for m in group for x in values.get((m, "test", drift), [])]
        ys = [y for m in group for y in values.get((m, "test", "worst_group_acc"), [])]
        if len(xs) == len(ys) > 2:
            rho, p = spearmanr(xs, ys)
            print(
                f"Spearman rho(drift, worst-group acc) over {label} x seeds (n = {len(xs)}): {rho:+.3f} (p = {p:.3g})"
            )
    print(f"total wall time {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
