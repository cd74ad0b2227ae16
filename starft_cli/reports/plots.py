"""Plots (matplotlib, an optional extra: ``pip install starft[plot]``), imported only when asked for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from starft_cli.errors import UsageError
from starft_cli.paths import atomic_path

if TYPE_CHECKING:
    import pandas as pd

_GROUP = re.compile(r"^(group_acc|region_acc)\[(.*)\]$")


def plot(frame: pd.DataFrame, path: str | Path) -> Path:
    """A PNG with (left) ID-vs-OOD accuracy per model — ImageNet top-1 vs avg OOD top-1 when the domain-shift
    datasets are present, otherwise average vs worst-group accuracy per grouped dataset (effective robustness:
    points above the others' trend are more robust) — and (right) per-group accuracy bars per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib", "Install the plot extra: pip install 'starft[plot]'") from None
    from starft_cli.reports.tables import AVG_OOD, leaderboard

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG, got '{path.name}'", "Name the file *.png")
    board = leaderboard(frame)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    if f"{AVG_OOD} top1" in board.columns and "imagenet top1" in board.columns:
        for model in board.index:
            x, y = 100 * board.at[model, "imagenet top1"], 100 * board.at[model, f"{AVG_OOD} top1"]
            left.scatter([x], [y], label=model)
        left.set_xlabel("ImageNet top-1 (ID) %")
        left.set_ylabel("avg OOD top-1 %")
        lo = min(left.get_xlim()[0], left.get_ylim()[0])
        hi = max(left.get_xlim()[1], left.get_ylim()[1])
        left.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    else:
        grouped = [c[: -len(" top1")] for c in board.columns if c.endswith(" top1")]
        grouped = [d for d in grouped if f"{d} worst_group_acc" in board.columns]
        for model in board.index:
            xs = [100 * board.at[model, f"{d} top1"] for d in grouped]
            ys = [100 * board.at[model, f"{d} worst_group_acc"] for d in grouped]
            left.scatter(xs, ys, label=model)
            for d, x, y in zip(grouped, xs, ys, strict=True):
                left.annotate(d, (x, y), fontsize=7)
        left.set_xlabel("average accuracy %")
        left.set_ylabel("worst-group accuracy %")
    left.set_title("ID vs OOD")
    left.legend(fontsize=7)
    groups = frame[frame["metric"].str.match(_GROUP.pattern)]
    if not groups.empty:
        dataset = groups["dataset"].iloc[0]
        data = groups[groups["dataset"] == dataset]
        names = list(dict.fromkeys(data["metric"]))
        models = list(dict.fromkeys(data["model"]))
        width = 0.8 / max(1, len(models))
        for k, model in enumerate(models):
            values = data[data["model"] == model].set_index("metric")["value"].reindex(names)
            right.bar([i + k * width for i in range(len(names))], 100 * values.to_numpy(), width, label=model)
        right.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
        right.set_xticklabels([_GROUP.match(n).group(2) for n in names], rotation=60, ha="right", fontsize=7)
        right.set_ylabel("accuracy %")
        right.set_title(f"per-group accuracy: {dataset}")
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "no per-group results", ha="center", va="center")
        right.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def demo_figure(frame: pd.DataFrame, path: str | Path, models: list[str] | None = None) -> Path:
    """The demo's PNG: (left) in-distribution accuracy (``val`` top-1) against worst-group accuracy on the
    balanced ``test`` split, one point per model, with the zero-shot model's levels as dashed lines; (right) each
    model's accuracy on every test group (digit x background), bars side by side.

    ``frame`` holds result records of one dataset measured on a ``val`` and a ``test`` split; ``models`` fixes
    their order (default: as they appear). Raises :class:`UsageError` without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "the demo figure needs matplotlib", "Install the plot extra: pip install 'starft[plot]'"
        ) from None
    models = models or list(dict.fromkeys(frame["model"]))

    def value(model: str, split: str, metric: str) -> float:
        rows = frame[(frame["model"] == model) & (frame["split"] == split) & (frame["metric"] == metric)]
        return float(rows["value"].iloc[0]) * 100 if len(rows) else float("nan")

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 2.4]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^DvPX*"
    for k, model in enumerate(models):
        x, y = value(model, "val", "top1"), value(model, "test", "worst_group_acc")
        left.scatter(
            [x],
            [y],
            s=90,
            color=colours[k % len(colours)],
            marker=markers[k % len(markers)],
            edgecolors="black",
            linewidths=0.6,
            label=model,
            zorder=3,
        )
        left.annotate(model, (x, y), textcoords="offset points", xytext=(6, 4 + 9 * (k % 2)), fontsize=8)
    if models:
        left.axvline(value(models[0], "val", "top1"), color="grey", lw=0.8, ls="--", zorder=1)
        left.axhline(value(models[0], "test", "worst_group_acc"), color="grey", lw=0.8, ls="--", zorder=1)
    xs = [value(m, "val", "top1") for m in models]
    ys = [value(m, "test", "worst_group_acc") for m in models]
    for axis, values in ((left.set_xlim, xs), (left.set_ylim, ys)):
        finite = [v for v in values if v == v]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
        pad = max(2.0, 0.15 * (hi - lo))
        axis(max(0.0, lo - pad), min(100.0, hi + pad) + 0.5)
    left.set_xlabel("in-distribution accuracy % (val, biased like training)")
    left.set_ylabel("worst-group accuracy % (test, balanced)")
    left.set_title("ID vs worst-group accuracy (dashed: zero-shot)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    groups = frame[(frame["split"] == "test") & frame["metric"].str.match(_GROUP.pattern)]
    names = list(dict.fromkeys(groups["metric"]))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        data = groups[groups["model"] == model].set_index("metric")["value"].reindex(names)
        right.bar(
            [i + k * width for i in range(len(names))],
            100 * data.to_numpy(),
            width,
            label=model,
            color=colours[k % len(colours)],
        )
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    right.set_xticklabels([_GROUP.match(n).group(2) for n in names], rotation=70, ha="right", fontsize=7)
    right.set_ylabel("accuracy %")
    right.set_ylim(0, 100)
    right.set_title("accuracy per test group (digit on background)")
    right.legend(fontsize=8, ncol=len(models), loc="lower right")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
