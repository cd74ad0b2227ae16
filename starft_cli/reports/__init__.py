"""Result records, leaderboards (pandas + tabulate) and plots (matplotlib, optional)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starft_cli.locks import folder_lock
from starft_cli.paths import atomic_write_text
from starft_cli.reports.schema import (
    FIELDS,
    RESULTS_NAME,
    load_results,
    merge_records,
    read_records,
    to_records,
    write_results_json,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FIELDS",
    "RESULTS_NAME",
    "WrittenReport",
    "load_results",
    "merge_records",
    "read_records",
    "to_records",
    "write_report",
]


@dataclass
class WrittenReport:
    """What :func:`write_report` wrote: ``paths`` (results.json, leaderboard.md, leaderboard.csv), how many of the
    new records ``replaced`` earlier ones with the same key and how many were ``added``, and ``frame``, the merged
    records (old and new) the leaderboards show."""

    paths: list[Path]
    replaced: int
    added: int
    frame: pd.DataFrame


def write_report(
    out_dir: str | Path,
    frame: pd.DataFrame,
    baseline: str | None = None,
    missing: list[str] | None = None,
    description: str = "",
    *,
    notes: list[str] | None = None,
) -> WrittenReport:
    """Write ``results.json`` (merged with the one already there: only records with the same (model, dataset,
    split, metric) are replaced), ``leaderboard.md`` and ``leaderboard.csv`` (of the merged records), all under
    :func:`~starft_cli.locks.folder_lock`: another process writing ``out_dir`` at the same time is waited for, and
    its records are kept.

    Returns a :class:`WrittenReport`.
    """
    import pandas as pd

    from starft_cli.reports.schema import record_key
    from starft_cli.reports.tables import render

    out = Path(out_dir).expanduser()
    target = out / RESULTS_NAME
    new = to_records(frame)
    with folder_lock(out):  # read, merge and write as one step: a concurrent writer's records are never lost
        old = read_records(target) if target.exists() else []
        old_keys = {record_key(r) for r in old}
        replaced = sum(record_key(r) in old_keys for r in new)
        merged = merge_records(old, new)
        merged_frame = pd.DataFrame.from_records(merged)
        write_results_json(target, merged)
        md = render(merged_frame, "md", baseline, missing, description, notes=notes)
        atomic_write_text(out / "leaderboard.md", md)
        atomic_write_text(out / "leaderboard.csv", render(merged_frame, "csv", baseline))
    return WrittenReport(
        paths=[target, out / "leaderboard.md", out / "leaderboard.csv"],
        replaced=replaced,
        added=len(new) - replaced,
        frame=merged_frame,
    )
