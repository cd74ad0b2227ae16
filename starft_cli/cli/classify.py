"""``starft classify``: classification of images with any model (zero-shot, or a classifier run's trained head)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import ArchOpt, BatchSizeOpt, DeviceOpt, ModelOpt, TemplatesOpt
from starft_cli.cli.progress import progress_bar
from starft_cli.errors import UsageError
from starft_cli.formats import OutputFormat

HELP = "Classify images (zero-shot, or with a classifier run's trained head): each label's probability."
PROGRESS_THRESHOLD = 32
ClassifyFormat = OutputFormat.choices("table", "json", "csv")


def classify_command(
    images: Annotated[list[str], typer.Argument(help="Image files, directories or glob patterns.", show_default=False)],
    labels: Annotated[str | None, typer.Option("--labels", "-l", help="Comma-separated labels.")] = None,
    labels_file: Annotated[Path | None, typer.Option("--labels-file", help="A file with one label per line.")] = None,
    model: ModelOpt = "ViT-B-16",
    arch: ArchOpt = None,
    templates: TemplatesOpt = "ensemble",
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Show the K best labels.")] = None,
    output_format: Annotated[ClassifyFormat, typer.Option("--format", help="Output format.")] = ClassifyFormat.table,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    strict: Annotated[
        bool, typer.Option("--strict", help="An unreadable image is an error (default: skip it, warn, count).")
    ] = False,
) -> None:
    """Classify images (zero-shot, or with a classifier run's trained head): each label's probability."""
    label_list = _read_labels(labels, labels_file)
    from starft_cli.device import resolve_device
    from starft_cli.images import expand_image_args
    from starft_cli.models import load
    from starft_cli.zeroshot import classify, validate_labels

    label_list = validate_labels(label_list)
    paths = expand_image_args(images)  # input checked before any model is loaded
    resolved = resolve_device(device)
    loaded = load(model, device=resolved, arch=arch)
    skipped: list[str] = []
    results = _run_with_progress(
        classify, paths, label_list, loaded, templates, resolved, batch_size, top_k, strict, skipped
    )
    typer.echo(render(results, OutputFormat(output_format)), nl=False)
    if skipped:
        typer.echo(f"warning: {len(skipped)} of {len(paths)} image(s) skipped (unreadable, listed above)", err=True)


def _read_labels(labels: str | None, labels_file: Path | None) -> list[str]:
    if (labels is None) == (labels_file is None):
        raise UsageError("give exactly one of --labels and --labels-file", "e.g. --labels cat,dog")
    if labels is not None:
        return labels.split(",")
    assert labels_file is not None
    try:
        return [line for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read labels file {labels_file} ({exc.strerror})") from exc


def _run_with_progress(classify: Any, paths: list[Path], *args: Any) -> list[dict[str, Any]]:
    labels, loaded, templates, device, batch_size, top_k, strict, skipped = args
    kwargs = dict(
        model=loaded,
        templates=templates,
        device=device,
        batch_size=batch_size,
        top_k=top_k,
        strict=strict,
        skipped=skipped,
    )
    bar = progress_bar(quiet=len(paths) <= PROGRESS_THRESHOLD)
    if bar is None:
        return classify(paths, labels, **kwargs)
    with bar:
        task = bar.add_task("classifying", total=len(paths))
        return classify(paths, labels, progress=lambda done, total: bar.update(task, completed=done), **kwargs)


def render(results: list[dict[str, Any]], output_format: OutputFormat) -> str:
    """Render classification results as a table, strict JSON, or CSV."""
    if output_format == OutputFormat.json:
        return json.dumps(results, indent=2, allow_nan=False) + "\n"
    rows = [
        (r["image"], rank, p["label"], p["probability"])
        for r in results
        for rank, p in enumerate(r["predictions"], start=1)
    ]
    if output_format == OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "rank", "label", "probability"])
        writer.writerows((img, rank, label, f"{prob:.6f}") for img, rank, label, prob in rows)
        return buffer.getvalue()
    from tabulate import tabulate

    shown = [(img if rank == 1 else "", rank, label, f"{prob:.4f}") for img, rank, label, prob in rows]
    # the probability column as formatted (4 decimals): tabulate would re-read "1.0000" as 1 and print "1"
    table = tabulate(
        shown,
        headers=["image", "rank", "label", "probability"],
        tablefmt="simple",
        disable_numparse=[3],
        colalign=("left", "right", "left", "right"),
    )
    return table + "\n"


COMMANDS = [Command("classify", classify_command, HELP)]
