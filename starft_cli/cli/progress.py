"""The CLI's one progress bar: rich, on stderr, only where someone watches (a terminal)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(*, stats: bool = False, transient: bool = True, quiet: bool = False) -> Any | None:
    """A ``rich.progress.Progress`` on stderr (not started) with the columns every command shows: description,
    bar, done/total (``M/N``), then the task's ``stats`` field when ``stats`` (add tasks with ``stats=""``), and
    the time remaining. ``transient`` bars disappear when stopped.

    None (quiet mode: the caller prints plain lines or nothing) when ``quiet`` or when stderr is not a terminal
    (a pipe, a file, a test runner), so that logs never fill with redraws. rich is imported only for a real bar.
    """
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    columns.append(TimeRemainingColumn())
    return Progress(*columns, transient=transient, console=Console(stderr=True))
