"""Plots (matplotlib, an optional extra: ``pip install starft[plot]``), imported only when asked for."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.errors import UsageError
from starft_cli.paths import atomic_path

if TYPE_CHECKING:
    import pandas as pd


def _group_pattern() -> re.Pattern[str]:
    """Per-group detail records of the registered metrics: ``group_acc[<group>]``, ``region_acc[<region>]``."""
    from starft_cli.eval.metrics import detail_prefixes

    return re.compile(rf"^({'|'.join(map(re.escape, detail_prefixes()))})\[(.*)\]$")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write :func:`figure` of ``frame`` as a PNG at ``path`` (atomically)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"`plot` writes a PNG, got '{path.name}'", "Name the file *.png", param="plot")
    fig = figure(frame)
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def figure(frame: pd.DataFrame) -> Any:
    """A matplotlib figure with two panels.

    Left, per model: ImageNet top-1 (ID) vs avg OOD top-1 when the domain-shift datasets are present ("ID vs OOD
    accuracy"), otherwise average (top-1) vs worst-group accuracy of each grouped dataset ("average vs worst-group
    accuracy"), in %, with the y = x line (a point's distance below it is its robustness gap). Both axes share
    limits padded around the data (at least 5 points either side, within 0..100), so equal values still give a
    readable axis. Models have distinct markers, hollow and of decreasing size, so identical points stay visible
    as concentric marks. Right: per-group accuracy bars per model for the first dataset with groups.

    Raises :class:`~starft_cli.errors.UsageError` without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "`plot` needs matplotlib", "Install the plot extra: pip install 'starft[plot]'", param="plot"
        ) from None
    from starft_cli.reports.tables import avg_ood_columns, leaderboard

    board = leaderboard(frame).table
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    points: dict[str, list[tuple[float, float, str]]] = {}  # model -> (x, y, label)
    # a built-in suite's "id" entry against the average of its "ood" entries (their roles), when all are present
    shift = next(
        (
            (avg, id_col, ood)
            for avg, id_col, ood in avg_ood_columns()
            if avg in board.columns and id_col in board.columns
        ),
        None,
    )
    if shift is not None:
        avg, id_col, ood = shift
        for model in board.index:
            x, y = board.at[model, id_col], board.at[model, avg]
            points[model] = [(100 * x, 100 * y, "")]
        id_name = id_col[: -len(" top1")]
        left.set_xlabel(f"{'ImageNet' if id_name == 'imagenet' else id_name} top-1 accuracy (ID), %")
        shifts = f"{len(ood)} ImageNet shifts" if id_name == "imagenet" else f"{len(ood)} shifts"
        left.set_ylabel(f"avg OOD top-1 accuracy ({shifts}), %")
        left.set_title("ID vs OOD accuracy")
    else:
        grouped = [c[: -len(" top1")] for c in board.columns if c.endswith(" top1")]
        grouped = [d for d in grouped if f"{d} worst_group_acc" in board.columns]
        for model in board.index:
            points[model] = [
                (100 * board.at[model, f"{d} top1"], 100 * board.at[model, f"{d} worst_group_acc"], d) for d in grouped
            ]
        left.set_xlabel("average accuracy (top-1 over all test samples), %")
        left.set_ylabel("worst-group accuracy, %")
        left.set_title("average vs worst-group accuracy")
    points = {m: [p for p in ps if p[0] == p[0] and p[1] == p[1]] for m, ps in points.items()}  # drop NaN
    values = [v for ps in points.values() for x, y, _ in ps for v in (x, y)]
    lo, hi = axis_limits(values)
    left.plot([lo, hi], [lo, hi], color="grey", lw=0.9, ls="--", label="y = x", zorder=1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    count = len(points)
    for k, (model, ps) in enumerate(points.items()):
        if not ps:
            continue
        left.scatter(
            [x for x, _, _ in ps],
            [y for _, y, _ in ps],
            s=50 + min(110, 600 / count) * (count - 1 - k),  # earlier models larger: identical points stay visible
            marker=MARKERS[k % len(MARKERS)],
            facecolors="none",
            edgecolors=colors[k % len(colors)],
            linewidths=1.6,
            label=model,
            zorder=2 + k,
        )
    labels: dict[tuple[float, float], list[str]] = {}  # one label per position: "pacs, waterbirds" when they coincide
    for ps in points.values():
        for x, y, name in ps:
            at = labels.setdefault((round(x, 6), round(y, 6)), [])
            if name and name not in at:
                at.append(name)
    for (x, y), names in labels.items():
        if names:
            left.annotate(", ".join(names), (x, y), xytext=(10, -12), textcoords="offset points", fontsize=7)
    left.set_xlim(lo, hi)
    left.set_ylim(lo, hi)
    left.set_aspect("equal", adjustable="box")
    left.grid(True, lw=0.3, alpha=0.5)
    left.legend(fontsize=7, loc="upper left")
    _group_bars(right, frame)
    fig.tight_layout()
    return fig


def axis_limits(values: list[float], min_pad: float = 5.0) -> tuple[float, float]:
    """Shared axis limits (in %) around ``values``: padded by 10% of their range and at least ``min_pad`` points,
    kept within 0..100 (0..100 itself without values)."""
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max(min_pad, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < 2 * min_pad:  # at a bound: widen on the other side
        lo, hi = (0.0, 2 * min_pad) if lo == 0.0 else (100.0 - 2 * min_pad, 100.0)
    return lo, hi


def _group_bars(ax: Any, frame: pd.DataFrame) -> None:
    pattern = _group_pattern()
    groups = frame[frame["metric"].str.match(pattern.pattern)]
    if groups.empty:
        ax.text(0.5, 0.5, "no per-group results", ha="center", va="center")
        ax.set_axis_off()
        return
    dataset = groups["dataset"].iloc[0]
    data = groups[groups["dataset"] == dataset]
    names = list(dict.fromkeys(data["metric"]))
    models = list(dict.fromkeys(data["model"]))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        values = data[data["model"] == model].set_index("metric")["value"].reindex(names)
        ax.bar([i + k * width for i in range(len(names))], 100 * values.to_numpy(), width, label=model)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels([pattern.match(n).group(2) for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy, %")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-group accuracy: {dataset}")
    ax.legend(fontsize=7)


def demo_figure(
    frame: pd.DataFrame, path: str | Path, models: list[str] | None = None, majority: Collection[str] = ()
) -> Path:
    """The demo's PNG: (left) in-distribution accuracy (``val`` top-1) against worst-group accuracy on the
    balanced ``test`` split, one point per model, with the zero-shot model's levels as dashed lines; (right) each
    model's accuracy on every test group (digit x background), bars side by side.

    ``frame`` holds result records of one dataset measured on a ``val`` and a ``test`` split; ``models`` fixes
    their order (default: as they appear); ``majority`` names the groups that dominate the training data (marked
    with a star). Raises :class:`UsageError` without matplotlib.
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
    if len(models) > len(colours):  # one colour per model: tab20 past the default cycle's 10
        colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    markers = "os^DvPX*"
    for k, model in enumerate(models):
        x, y = value(model, "val", "top1"), value(model, "test", "worst_group_acc")
        left.scatter(
            [x],
            [y],
            s=max(30, 150 - 16 * k),  # decreasing sizes: coinciding models stay visible
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

    pattern = _group_pattern()
    groups = frame[(frame["split"] == "test") & frame["metric"].str.match(pattern.pattern)]
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
    labels = [pattern.match(n).group(2) for n in names]
    right.set_xticklabels([f"{g} *" if g in majority else g for g in labels], rotation=70, ha="right", fontsize=7)
    right.set_ylabel("accuracy %")
    right.set_ylim(0, 100)
    title = "accuracy per test group"
    if majority:
        title += " (* = the group that dominates its class in the fine-tuning data)"
    rows = -(-len(models) // 7)  # at most 7 legend entries per row above the bars
    right.set_title(title, pad=16 + 12 * rows)
    right.legend(fontsize=8, ncol=min(len(models), 7), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
