"""``starft probe``: how far have models drifted from a zero-shot reference on spurious descriptions?"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import BatchSizeOpt, DeviceOpt, StrictOpt, TextCacheOpt, WorkersOpt
from starft_cli.formats import OutputFormat, parse_format

if TYPE_CHECKING:
    import pandas as pd

HELP = (
    "Spurious drift of models from a zero-shot reference: StarReg's masked KL over other-class spurious "
    "descriptions on held-out data, per pool, with a bootstrap CI, per class and per group."
)
PROBE_FORMATS = OutputFormat.choices("table", "json", "csv")
DETAIL_LIMIT = 16  # groups listed in full up to this many; classes: the highest few


def probe_command(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Model to probe (repeatable): a checkpoint folder, ARCH[:TAG], zoo name..."),
    ],
    reference: Annotated[
        str, typer.Option("--reference", "-r", help="The zero-shot model the drift is measured from (e.g. ViT-B-16).")
    ],
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset: NAME, folder:PATH or csv:PATH.")],
    data_root: Annotated[
        Path | None, typer.Option("--data-root", envvar="STARFT_DATA_ROOT", help="Folder holding the datasets.")
    ] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            help="Spurious pool (repeatable): background, texture, resolution, digits, or a file. Default: background.",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to probe (default: the dataset's own).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batches, template draws and bootstrap.")] = 0,
    reg_batch_size: Annotated[
        int,
        typer.Option("--reg-batch-size", min=1, help="Samples per StarReg batch (as in training; default 256)."),
    ] = 256,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples of the 95% interval (0: none).")
    ] = 1000,
    caption_template: Annotated[
        str | None,
        typer.Option(
            "--caption-template", help='Caption of a class, filled into the pool (default "a photo of a {}.").'
        ),
    ] = None,
    classnames: Annotated[
        Path | None, typer.Option("--classnames", help="Class names file (one per line) for folder:/csv: data.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Add the records to results.json (and leaderboard.md/.csv) here."),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    cache: TextCacheOpt = True,
    strict: StrictOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = 2,
) -> None:
    """Spurious drift of models from a zero-shot reference (StarReg on held-out data)."""
    fmt = parse_format(output_format, PROBE_FORMATS)
    from starft_cli.device import resolve_device
    from starft_cli.models import parse_model_ref
    from starft_cli.probe import load_pools, probe

    refs = [parse_model_ref(ref) for ref in model]  # a typo fails before any data is read
    reference_ref = parse_model_ref(reference)
    load_pools(pool)  # so does a bad pool
    frame = probe(
        refs,
        reference_ref,
        data,
        data_root,
        split,
        pool,
        device=resolve_device(device),
        seed=seed,
        reg_batch_size=reg_batch_size,
        caption_template=caption_template,
        bootstrap=bootstrap,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        use_cache=cache,
        classnames_file=classnames,
    )
    if out is not None:
        from starft_cli.reports import write_report

        written = write_report(out, frame, description=f"spurious drift from {reference}")
        note = f" ({written.replaced} earlier record(s) replaced)" if written.replaced else ""
        typer.echo(f"wrote {', '.join(str(p) for p in written.paths)}{note}", err=True)
    typer.echo(render(frame, fmt), nl=False)


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The probe's records as a table (drift, interval, samples; groups and the highest-drift classes below),
    JSON records or CSV records."""
    from starft_cli.probe import CLASS_METRIC, GROUP_METRIC, is_drift_metric
    from starft_cli.reports.schema import to_records

    if fmt == "json":
        import json

        return json.dumps(to_records(frame), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()
    from tabulate import tabulate

    heads = frame[frame["metric"].map(is_drift_metric)]
    rows = []
    details = []
    for _, r in heads.iterrows():
        ci = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if int(r["bootstrap"]) > 0 else "–"
        rows.append([r["model"], r["pool"], f"{r['value']:.4f}", ci, int(r["num_samples"])])
        mine = frame[frame["model"] == r["model"]]
        for kind, label, full in ((GROUP_METRIC, "groups", True), (CLASS_METRIC, "highest classes", False)):
            prefix = f"{kind}[{r['pool']}:"
            part = mine[mine["metric"].str.startswith(prefix)]
            if part.empty:
                continue
            pairs = [(m[len(prefix) : -1], v) for m, v in zip(part["metric"], part["value"], strict=True)]
            if not full or len(pairs) > DETAIL_LIMIT:
                pairs = sorted(pairs, key=lambda p: -p[1])[:3]
                label = f"highest {label.split()[-1]}" if full else label
            details.append(f"{r['model']} / {r['pool']} {label}: " + ", ".join(f"{n} {v:.4f}" for n, v in pairs))
    ref = heads["reference"].iloc[0] if len(heads) else "?"
    text = tabulate(
        rows, headers=["model", "pool", "drift (nats)", "95% CI", "samples"], tablefmt="simple", disable_numparse=True
    )
    notes = [
        f"drift = StarReg (masked KL, teacher temperature) of each model against {ref} on held-out images; "
        "0 = the reference's view of the spurious descriptions",
        *details,
    ]
    return text + "\n" + "".join(f"* {n}\n" for n in notes)


COMMANDS = [Command("probe", probe_command, HELP)]
