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
    left.set_xlim(lo, hi)
    left.set_ylim(lo, hi)
    _percent_ticks(left)
    left.set_aspect("equal", adjustable="box")
    left.grid(True, lw=0.3, alpha=0.5)
    _uniform_legend(left.legend(fontsize=7, loc="upper left"))  # above y = x: where no point can be
    _group_bars(right, frame)
    fig.tight_layout()
    label_points(left, [(x, y, name) for ps in points.values() for x, y, name in ps if name])
    return fig


def _percent_ticks(ax: Any) -> None:
    """Tick labels only within 0..100 (the limits may reach past them, so that points at 0 or 100 show whole)."""
    for get, set_ticks, limits in (
        (ax.get_xticks, ax.set_xticks, ax.get_xlim),
        (ax.get_yticks, ax.set_yticks, ax.get_ylim),
    ):
        lo, hi = limits()
        set_ticks([t for t in get() if max(lo, 0.0) - 1e-9 <= t <= min(hi, 100.0) + 1e-9])


def _uniform_legend(legend: Any, size: float = 40.0) -> None:
    """One marker size for every entry of ``legend`` (the points' sizes differ so that coinciding ones stay
    visible; in the legend, sizes that differ would overlap the next entries)."""
    for handle in getattr(legend, "legend_handles", None) or getattr(legend, "legendHandles", []):
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([size])


def label_points(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 7.0, gap_pt: float = 13.0) -> list:
    """Label ``points`` ``(x, y, name)`` in data units of ``ax`` (limits and layout already final), readably.

    A name gets one label, however many points (models) carry it; names whose points lie within 2% of the axis
    span of one another's share one label (``"pacs, cifar10.02"``). A label sits ``gap_pt`` points right of its
    points (left of them near the right edge: clear of the largest marker), stacked so that no two overlap and
    inside the axes, clear of the tick labels; a thin line joins a label that had to move to its points.
    Returns the text artists.
    """
    if not points:
        return []
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    span_x, span_y = x1 - x0, y1 - y0
    by_name: dict[str, list[tuple[float, float]]] = {}
    for x, y, name in points:
        by_name.setdefault(name, []).append((x, y))

    def centre(members: list[tuple[float, float]]) -> tuple[float, float]:
        return sum(x for x, _ in members) / len(members), sum(y for _, y in members) / len(members)

    groups: list[tuple[list[str], list[tuple[float, float]]]] = []
    for name, members in by_name.items():
        cx, cy = centre(members)
        for names, others in groups:
            ox, oy = centre(others)
            if abs(cx - ox) <= 0.02 * span_x and abs(cy - oy) <= 0.02 * span_y:
                names.append(name)
                others.extend(members)
                break
        else:
            groups.append(([name], list(members)))
    ax.apply_aspect()
    box = ax.get_window_extent()
    per_pt_x = ax.figure.dpi / 72 / box.width * span_x  # one typographic point in x data units
    line = fontsize * 1.35 * ax.figure.dpi / 72 / box.height * span_y  # one text line in y data units
    gap = gap_pt * per_pt_x
    labels = []  # (desired y, x, anchor x, ha, text, x extent)
    for names, members in groups:
        text = ", ".join(names)
        width = 0.6 * fontsize * per_pt_x * len(text)
        start = max(x for x, _ in members) + gap
        if start + width <= x1:  # ha="left": the text begins right of the points
            labels.append((centre(members)[1], start, start - gap, "left", text, (start, start + width)))
        else:
            end = min(x for x, _ in members) - gap
            labels.append((centre(members)[1], end, end + gap, "right", text, (end - width, end)))
    low, high = y0 + 0.8 * line, y1 - 0.8 * line  # inside the axes, above the x axis: clear of the tick labels
    taken: list[tuple[float, tuple[float, float]]] = []
    placed = []
    for cy, x, anchor, ha, text, extent in sorted(labels):
        # the nearest free line to the points: up, then down, one line at a time
        tries = [min(max(cy, low), high) + k * line for n in range(200) for k in ((n + 1) // 2 * (-1) ** (n + 1),)]
        y = next(
            (
                t
                for t in tries
                if low <= t <= high
                and not any(abs(t - ty) < line and extent[0] < te[1] and te[0] < extent[1] for ty, te in taken)
            ),
            min(max(cy, low), high),
        )
        taken.append((y, extent))
        moved = abs(y - cy) > 0.5 * line
        placed.append(
            ax.annotate(
                text,
                xy=(anchor, cy),
                xytext=(x, y),
                textcoords="data",
                ha=ha,
                va="center",
                fontsize=fontsize,
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 1} if moved else None,
                annotation_clip=False,
            )
        )
    return placed


def axis_limits(values: list[float], min_pad: float = 5.0, edge: float = 0.04) -> tuple[float, float]:
    """Shared axis limits (in %) around ``values``: padded by 10% of their range and at least ``min_pad`` points,
    kept within 0..100 (0..100 itself without values); a limit at 0 or 100 then reaches ``edge`` of the span past
    it, so that a point at 0% or 100% is drawn whole, not cut in half by the axis."""
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max(min_pad, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < 2 * min_pad:  # at a bound: widen on the other side
        lo, hi = (0.0, 2 * min_pad) if lo == 0.0 else (100.0 - 2 * min_pad, 100.0)
    margin = edge * (hi - lo)
    return (lo - margin if lo <= 0.0 else lo), (hi + margin if hi >= 100.0 else hi)


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
    _legend_above(ax, f"per-group accuracy: {dataset}", len(models), fontsize=7)


def _legend_above(ax: Any, title: str, count: int, fontsize: float, per_row: int = 4) -> None:
    """The title, then the legend in rows of ``per_row`` entries above the axes, where it covers no bar."""
    rows = -(-count // per_row)
    ax.set_title(title, pad=8 + (fontsize + 5) * rows)
    ax.legend(fontsize=fontsize, ncol=min(count, per_row), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


def demo_figure(
    frame: pd.DataFrame, path: str | Path, models: list[str] | None = None, majority: Collection[str] = ()
) -> Path:
    """Write :func:`demo_plot` of ``frame`` as a PNG at ``path`` (atomically)."""
    fig = demo_plot(frame, models, majority)  # raises UsageError without matplotlib
    import matplotlib.pyplot as plt

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def demo_plot(frame: pd.DataFrame, models: list[str] | None = None, majority: Collection[str] = ()) -> Any:
    """The demo's figure: (left) in-distribution accuracy (``val`` top-1) against worst-group accuracy on the
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
    if models:
        left.axvline(value(models[0], "val", "top1"), color="grey", lw=0.8, ls="--", zorder=1)
        left.axhline(value(models[0], "test", "worst_group_acc"), color="grey", lw=0.8, ls="--", zorder=1)
    xs = [value(m, "val", "top1") for m in models]
    ys = [value(m, "test", "worst_group_acc") for m in models]
    for axis, values in ((left.set_xlim, xs), (left.set_ylim, ys)):
        finite = [v for v in values if v == v]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
        pad = max(2.0, 0.15 * (hi - lo))
        lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
        margin = 0.04 * (hi - lo)  # a point at 0% or 100% whole, not cut in half by the axis
        axis(lo - margin if lo <= 0.0 else lo, hi + margin if hi >= 100.0 else hi)
    _percent_ticks(left)
    left.set_xlabel("in-distribution accuracy % (val, biased like training)")
    left.set_ylabel("worst-group accuracy % (test, balanced)")
    left.set_title("ID vs worst-group accuracy (dashed: zero-shot)")
    left.grid(alpha=0.3)
    _uniform_legend(left.legend(fontsize=8, loc="best"))

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
    label_points(left, [(x, y, m) for m, x, y in zip(models, xs, ys, strict=True) if x == x and y == y], fontsize=8)
    return fig
