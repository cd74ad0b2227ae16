"""``starft eval`` (suites or datasets, several models -> leaderboard and result files) and ``starft report``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import BatchSizeOpt, DeviceOpt, StrictOpt, WorkersOpt
from starft_cli.cli.progress import progress_bar
from starft_cli.errors import UsageError
from starft_cli.eval.metrics import metric_names
from starft_cli.formats import parse_format

EVAL_HELP = "Evaluate models on a benchmark suite or datasets: leaderboard, results.json/md/csv."
REPORT_HELP = "Merge result files into one leaderboard, with deltas against a baseline and optional plots."
PROGRESS_THRESHOLD = 256


def eval_command(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Model reference (repeatable): ARCH[:TAG], weights file/folder, hf-hub:..."),
    ],
    suite: Annotated[
        str | None,
        typer.Option(
            "--suite", "-s", help="domain-shift, group-shift, zero-shot, transfer, all, or a suite .toml file."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", "-d", help="A dataset instead of a suite (repeatable): NAME, folder:PATH or csv:PATH."),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", envvar="STARFT_DATA_ROOT", help="Folder holding the datasets.")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split for --data datasets (default: their own).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="Metric for --data datasets (repeatable; default top1, top5, ece; one that does not apply is an "
            "error): " + ", ".join(metric_names()) + ".",
        ),
    ] = None,
    classnames: Annotated[
        Path | None, typer.Option("--classnames", help="Class names file (one per line) for folder:/csv: data.")
    ] = None,
    templates: Annotated[
        str | None, typer.Option("--templates", help="Template set name or file (default: each dataset's own).")
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="Class names and templates of registered datasets: reference (the StarFT authors' code where it "
            "evaluates the dataset, else CLIP_benchmark's) or clip-benchmark (CLIP_benchmark's).",
        ),
    ] = "reference",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results.json, leaderboard.md/.csv here.")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="Leaderboard on stdout: table, md, csv, json.")
    ] = "table",
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Model the deltas refer to (default: first).")
    ] = None,
    strict: StrictOpt = False,
    skip_missing: Annotated[
        bool | None,
        typer.Option("--skip-missing/--no-skip-missing", help="Skip absent datasets (default: only for --suite all)."),
    ] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use the on-disk feature cache.")] = True,
    download: Annotated[
        bool,
        typer.Option("--download", help="Fetch the Hub copy of every dataset not under --data-root first."),
    ] = False,
    fast_decode: Annotated[
        bool,
        typer.Option(
            "--fast-decode",
            help="Decode large JPEGs at a reduced DCT scale (faster; a few predictions may change; "
            "default: full decoding, the standard pipeline).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = 2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed recorded with the results.")] = 0,
) -> None:
    """Evaluate models on a benchmark suite or datasets: leaderboard, results.json/md/csv."""
    fmt = parse_format(output_format)
    if (suite is None) == (not data):
        raise UsageError("give exactly one of --suite and --data", "e.g. --suite group-shift, or --data folder:PATH")
    if (classnames is not None or split is not None or metric) and not data:
        raise UsageError("--classnames, --split and --metric apply to --data datasets", "Drop them or use --data")
    from starft_cli.eval.suites import Suite, SuiteEntry, get_suite

    if data:
        entries = tuple(
            SuiteEntry(
                dataset=d,
                metrics=tuple(metric or ("top1", "top5", "ece")),
                split=split,
                classnames=str(classnames) if classnames else None,
                templates=templates,
                explicit=bool(metric),
            )
            for d in data
        )
        resolved = Suite("custom", entries)
    else:
        assert suite is not None
        resolved = get_suite(suite)

    from starft_cli.device import resolve_device
    from starft_cli.eval.runner import evaluate_plan, plan
    from starft_cli.models import parse_model_ref

    refs = [parse_model_ref(ref) for ref in model]  # a typo in a model reference fails before any data is read
    skip = resolved.name == "all" if skip_missing is None else skip_missing
    if download:
        from starft_cli.cli.data import _announce
        from starft_cli.data.sources.hub import fetch_missing

        for line in fetch_missing([(e.dataset, e.split) for e in resolved.entries], data_root, announce=_announce):
            typer.echo(f"not downloaded: {line}", err=True)
    prepared = plan(resolved, data_root, templates, classnames, skip, protocol)  # data checked before any model
    for line in prepared.missing:
        typer.echo(f"skipped (not present): {line}", err=True)
    for line in prepared.notes:
        typer.echo(f"note: {line}", err=True)
    resolved_device = resolve_device(device)
    with _progress() as progress:
        result = evaluate_plan(
            refs,
            prepared,
            device=resolved_device,
            batch_size=batch_size,
            workers=workers,
            strict=strict,
            use_cache=cache,
            seed=seed,
            progress=progress,
            fast_decode=fast_decode,
        )
    for line in result.skipped:
        typer.echo(f"warning: {line}", err=True)
    for line in result.notes:
        if line not in prepared.notes:  # those were said before the evaluation
            typer.echo(f"note: {line}", err=True)
    from starft_cli.reports import write_report
    from starft_cli.reports.tables import render

    shown = result.frame
    if out is not None:
        written = write_report(out, result.frame, baseline, result.missing, resolved.description, notes=result.notes)
        shown = written.frame
        note = f" ({written.replaced} earlier record(s) replaced)" if written.replaced else ""
        typer.echo(f"wrote {', '.join(str(p) for p in written.paths)}{note}", err=True)
    # the missing datasets were listed on stderr, one line each: stdout names them once, in one line
    names = result.missing_names
    summary = [f"{len(names)} dataset(s) not present (listed on stderr): {', '.join(names)}"] if names else []
    typer.echo(render(shown, fmt, baseline, summary, resolved.description, notes=result.notes), nl=False)


class _progress:
    """A progress bar on stderr (:func:`~starft_cli.cli.progress.progress_bar`) for datasets large enough to need
    one; quiet when stderr is not a terminal."""

    def __enter__(self) -> Any:
        self.bar: Any = None
        self.asked = False
        self.tasks: dict[str, Any] = {}
        return self.update

    def update(self, name: str, done: int, total: int) -> None:
        if total < PROGRESS_THRESHOLD:
            return
        if not self.asked:  # the bar is made (and started) when the first large dataset reports
            self.asked = True
            self.bar = progress_bar()
            if self.bar is not None:
                self.bar.start()
        if self.bar is None:
            return
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.update(self.tasks[name], completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def report_command(
    results: Annotated[
        list[Path], typer.Argument(help="results.json files, or folders holding one (eval output or run dirs).")
    ],
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Model the deltas refer to (default: first).")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, md, csv or json.")] = "table",
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also write a PNG: ID vs OOD (or average vs worst-group) accuracy, group bars."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the rendering to this file, not stdout.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out or --plot file.")] = False,
) -> None:
    """Merge result files into one leaderboard, with deltas against a baseline and optional plots."""
    fmt = parse_format(output_format)
    targets = [t for t in (out, plot) if t is not None]
    _refuse_existing(targets, force)
    from starft_cli.reports import load_results
    from starft_cli.reports.tables import render

    frame = load_results(results)
    if frame.empty:
        raise UsageError("the results hold no records")
    text = render(frame, fmt, baseline)
    from starft_cli.locks import folder_lock

    with contextlib.ExitStack() as stack:
        # one writer at a time per folder: a report started beside this one finds these files and is refused
        for folder in sorted({os.path.realpath(t.expanduser().parent) for t in targets}):
            stack.enter_context(folder_lock(folder))
        _refuse_existing(targets, force)
        if plot is not None:
            from starft_cli.reports.plots import plot as make_plot

            make_plot(frame, plot)
            typer.echo(f"wrote {plot}", err=True)
        if out is not None:
            from starft_cli.paths import atomic_write_text

            atomic_write_text(out, text)
            typer.echo(f"wrote {out}", err=True)
    if out is None:
        typer.echo(text, nl=False)


def _refuse_existing(targets: list[Path], force: bool) -> None:
    """:class:`UsageError` for the first of ``targets`` that exists, unless ``force``."""
    for target in targets:
        if target.exists() and not force:
            raise UsageError(f"{target} exists", "Pass --force to overwrite it, or choose another name")


COMMANDS = [Command("eval", eval_command, EVAL_HELP), Command("report", report_command, REPORT_HELP)]
