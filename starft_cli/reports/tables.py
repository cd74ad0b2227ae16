"""Leaderboards from result records: one row per model, headline metrics per dataset, deltas to a baseline."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DRIFT_PREFIX = "spurious_drift["  # `starft probe`: nats, shown as they are (not in %), after the headline metrics
AVG_OOD = "avg OOD"
AVG_OOD_METRIC = "top1"  # what "avg OOD" averages over a suite's "ood" entries


def _is_headline(metric: str) -> bool:
    """Whether leaderboards show records of ``metric``: a registered metric when its registry entry says so, never
    a per-group detail record (``group_acc[...]``), a drift record when it is a pool's (not a class's or group's);
    any other name (records from elsewhere) when it has no brackets."""
    from starft_cli.eval.metrics import METRICS, detail_metric

    if metric in METRICS:
        return METRICS[metric].headline
    if detail_metric(metric) is not None:
        return False
    return "[" not in metric or _is_drift(metric)


def _is_drift(metric: str) -> bool:
    """``spurious_drift[<pool>]`` (a headline); the per-class/group drift records stay in results.json."""
    return metric.startswith(DRIFT_PREFIX) and metric.endswith("]") and metric.count("[") == 1


def avg_ood_columns() -> list[tuple[str, str | None, list[str]]]:
    """``(column, id column, ood columns)`` of every built-in suite with "ood" entries (their roles): the
    leaderboard column ``avg OOD top1`` averages the ood columns (``avg OOD[<suite>] top1`` when several suites
    have shifts)."""
    from starft_cli.eval.suites import shifts

    found = shifts()
    out = []
    for shift in found:
        name = AVG_OOD if len(found) == 1 else f"{AVG_OOD}[{shift.suite}]"
        id_column = None if shift.id is None else f"{shift.id} {AVG_OOD_METRIC}"
        out.append((f"{name} {AVG_OOD_METRIC}", id_column, [f"{d} {AVG_OOD_METRIC}" for d in shift.ood]))
    return out


def leaderboard(
    frame: pd.DataFrame, baseline: str | None = None, metrics: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Wide table: index = model (in order of first appearance), columns = ``dataset metric`` (each dataset's
    headline metrics in registry order, see :data:`starft_cli.eval.metrics.METRICS`; plus ``avg OOD top1`` when
    every "ood" entry of a built-in suite is present: the four ImageNet shifts), values as fractions.
    ``attrs["deltas"]`` holds the differences to ``baseline`` (default: the first model)."""
    import pandas as pd

    from starft_cli.errors import UsageError
    from starft_cli.eval.metrics import METRICS

    data = frame[frame["metric"].map(_is_headline)].copy()
    if metrics is not None:
        data = data[data["metric"].isin(metrics)]
    if "split" in data.columns:
        # a dataset measured on several splits gets one column group per split: "waterbirds[val] top1"
        splits = data.groupby("dataset", sort=False)["split"].nunique()
        several = set(splits[splits > 1].index)
        data["dataset"] = [
            f"{d}[{s}]" if d in several else d for d, s in zip(data["dataset"], data["split"], strict=True)
        ]
    models = list(dict.fromkeys(data["model"]))
    order_ds = list(dict.fromkeys(data["dataset"]))
    metric_rank = {m: i for i, m in enumerate(METRICS)}
    columns: list[tuple[str, str]] = []
    for ds in order_ds:
        present = list(dict.fromkeys(data.loc[data["dataset"] == ds, "metric"]))
        present.sort(key=lambda m: metric_rank.get(m, len(METRICS)))
        columns.extend((ds, m) for m in present)
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for ds, metric in columns:
        rows = data[(data["dataset"] == ds) & (data["metric"] == metric)]
        table[f"{ds} {metric}"] = rows.groupby("model", sort=False)["value"].last().reindex(models)
    for column, _, ood_columns in avg_ood_columns():
        if all(c in table.columns for c in ood_columns):
            table[column] = table[ood_columns].mean(axis=1, skipna=False)
    base = baseline if baseline is not None else (models[0] if models else None)
    if base is not None and base not in table.index:
        raise UsageError(f"baseline '{base}' is not among the models", f"Use one of: {', '.join(models)}")
    table.attrs["baseline"] = base
    table.attrs["deltas"] = table - table.loc[base] if base is not None else table * 0
    return table


def _fmt(value: Any, delta: Any, is_base: bool, show_delta: bool, raw: bool = False) -> str:
    """A cell: a fraction in % with 2 decimals, or (``raw``: drift in nats) the value itself with 4 decimals."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    factor, digits = (1, 4) if raw else (100, 2)
    text = f"{factor * value:.{digits}f}"
    if show_delta and not is_base and delta is not None and not (isinstance(delta, float) and math.isnan(delta)):
        text += f" ({factor * delta:+.{digits}f})"
    return text


def footnotes(
    frame: pd.DataFrame, missing: list[str] | None = None, description: str = "", notes: list[str] | None = None
) -> list[str]:
    """The lines under a leaderboard: the description, what each metric means, skipped images, missing datasets
    and ``notes`` (e.g. metrics of a suite that did not apply to a dataset)."""
    from starft_cli.eval.metrics import METRICS

    out = []
    if description:
        out.append(description)
    shown = set(frame["metric"]) if "metric" in frame.columns else set()
    # what each metric shown means, from its registry entry, in column order
    parts = [
        f"{m.name} = {m.doc}" + ("" if m.higher_is_better else " (lower is better)")
        for m in METRICS.values()
        if m.headline and m.name in shown
    ]
    if any(_is_drift(str(m)) for m in shown):
        parts.append(
            "spurious_drift[pool] = StarReg's masked KL between the reference's and the model's distributions over "
            "other-class spurious descriptions on this split (`starft probe`; in nats, not %; 0 = the reference's view)"
        )
    parts.append("deltas in parentheses are against the baseline (first) model")
    out.append("Values in %. " + "; ".join(parts) + ".")
    if {"dataset", "protocol", "protocol_source"} <= set(frame.columns):  # where class names and templates come from
        from starft_cli.data.protocols import summary_lines

        rows = frame[["dataset", "protocol", "protocol_source"]].dropna().drop_duplicates()
        out.extend(summary_lines([tuple(r) for r in rows.itertuples(index=False)]))
    if "num_skipped" in frame.columns:
        skipped = frame.drop_duplicates(["model", "dataset"]).query("num_skipped > 0")
        for _, row in skipped.iterrows():
            out.append(f"{row['model']} on {row['dataset']}: {int(row['num_skipped'])} unreadable image(s) skipped")
    for line in missing or []:
        out.append(f"not evaluated: {line}")
    out.extend(notes or [])
    return out


def render(
    frame: pd.DataFrame,
    fmt: str = "table",
    baseline: str | None = None,
    missing: list[str] | None = None,
    description: str = "",
    *,
    notes: list[str] | None = None,
) -> str:
    """Render records as a leaderboard (``table``, ``md``, ``csv``: every headline metric, i.e. all but the
    per-group detail records) or as the records themselves (``json``)."""
    from starft_cli.reports.schema import to_records

    if fmt == "json":
        return json.dumps(to_records(frame), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if frame.empty or "metric" not in frame.columns:
        return "(no results)\n" + "".join(f"* {n}\n" for n in footnotes(frame, missing, description, notes))
    board = leaderboard(frame, baseline)
    deltas = board.attrs["deltas"]
    base = board.attrs["baseline"]
    if fmt == "csv":
        out = board.copy()
        for column in board.columns:
            out[f"{column} delta"] = deltas[column]
        buffer = io.StringIO()
        out.reset_index().to_csv(buffer, index=False, float_format="%.6f", lineterminator="\n")
        return buffer.getvalue()
    from tabulate import tabulate

    rows = []
    for model in board.index:
        cells = [
            _fmt(board.at[model, c], deltas.at[model, c], model == base, True, DRIFT_PREFIX in c) for c in board.columns
        ]
        rows.append([model, *cells])
    headers = ["model", *board.columns]
    lines = footnotes(frame, missing, description, notes)
    if fmt == "md":
        text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
        return text + "\n\n" + "".join(f"- {n}\n" for n in lines)
    text = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    return text + "\n" + "".join(f"* {n}\n" for n in lines)
