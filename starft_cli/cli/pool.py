"""``starft pool discover | import | list | show``: spurious pools, found in your data or imported."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import BatchSizeOpt, DeviceOpt, ModelOpt, StrictOpt, TextCacheOpt, WorkersOpt
from starft_cli.formats import OutputFormat, parse_format

if TYPE_CHECKING:
    from starft_cli.discover import Discovery

app = typer.Typer(
    help="Spurious pools: discover the shortcuts in your training data and build a pool from them, import a pool "
    "(torch list, JSON list or text), list and show pools.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
DISCOVER_FORMATS = OutputFormat.choices("table", "json", "csv")
GROUPS_SHOWN = 3  # groups listed per attribute in the table


@app.command("discover")
def discover_command(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset: NAME, folder:PATH or csv:PATH.")],
    model: ModelOpt = "ViT-B-16",
    split: Annotated[
        str | None, typer.Option("--split", help="Split to search (default: train where the dataset has one).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", envvar="STARFT_DATA_ROOT", help="Folder holding the datasets.")
    ] = None,
    vocab: Annotated[
        list[Path] | None,
        typer.Option("--vocab", help="Your attribute phrases, one per line (repeatable), added to the shipped ones."),
    ] = None,
    shipped_vocab: Annotated[
        bool,
        typer.Option("--shipped-vocab/--no-shipped-vocab", help="Use the shipped vocabulary (scenes, colours, ...)."),
    ] = True,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Attributes in the table and the pool.")] = 20,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the top attributes as a pool file for --pool.")
    ] = None,
    caption_template: Annotated[
        str | None,
        typer.Option(
            "--caption-template", help='Caption of a class, filled into each phrase (default "a photo of a {}.").'
        ),
    ] = None,
    classnames: Annotated[
        Path | None, typer.Option("--classnames", help="Class names file (one per line) for folder:/csv: data.")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    cache: TextCacheOpt = True,
    strict: StrictOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = 2,
) -> None:
    """Find the attributes that mark a class in a dataset split (its shortcuts) and write them as a pool."""
    fmt = parse_format(output_format, DISCOVER_FORMATS)
    from starft_cli.device import resolve_device
    from starft_cli.discover import discover, load_vocabulary, pool_text
    from starft_cli.models import parse_model_ref

    ref = parse_model_ref(model)  # a typo fails before any data is read
    load_vocabulary(vocab or (), shipped=shipped_vocab)  # so does a bad vocabulary file
    found = discover(
        ref,
        data,
        data_root,
        split or _default_discover_split(data),
        vocab_files=vocab or (),
        shipped_vocab=shipped_vocab,
        caption_template=caption_template,
        device=resolve_device(device),
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        use_cache=cache,
        classnames_file=classnames,
    )
    if out is not None:
        from starft_cli.paths import atomic_write_text

        atomic_write_text(out, pool_text(found, top))
        typer.echo(f"wrote {out} ({min(top, len(found.findings))} templates; use it with --pool {out})", err=True)
    typer.echo(render_discovery(found, top, fmt), nl=False)


def _default_discover_split(data: str) -> str | None:
    """``train`` for a registered dataset that has it (the data one fine-tunes on); otherwise the dataset's own."""
    if data.startswith(("folder:", "csv:")):
        return None
    from starft_cli.data.registry import get_builder

    splits = get_builder(data).info.splits
    return "train" if "train" in splits else None


def discovery_records(found: Discovery, top: int) -> list[dict[str, Any]]:
    """One flat record per finding (the JSON and CSV rows)."""
    rows = []
    for f in found.top(top):
        row: dict[str, Any] = {
            "rank": f.rank,
            "attribute": f.phrase,
            "template": f.template,
            "category": f.category,
            "marks": f.classname,
            "strength_bits": round(f.strength, 6),
            "share": round(f.share, 6),
            "others": round(f.others, 6),
            "lift": round(f.lift, 4),
            "images": f.images,
        }
        if f.groups is not None:
            row["groups"] = [{"group": g.group, "images": g.images, "share": round(g.share, 6)} for g in f.groups]
        rows.append(row)
    return rows


def render_discovery(found: Discovery, top: int, fmt: str) -> str:
    """The ranked attributes as a table (with notes: the totals, the timing, groups), JSON or CSV."""
    records = discovery_records(found, top)
    if fmt == "json":
        payload = {
            "dataset": found.dataset,
            "split": found.split,
            "model": found.model,
            "images": found.num_images,
            "skipped": found.num_skipped,
            "vocabulary": found.vocabulary_size,
            "caption_template": found.caption_template,
            "mutual_information_bits": round(found.mutual_information, 6),
            "label_entropy_bits": round(found.label_entropy, 6),
            "seconds": {k: round(v, 3) for k, v in found.timing.items() if k != "images_cached"},
            "features_cached": bool(found.timing.get("images_cached")),
            "attributes": records,
        }
        return json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if fmt == "csv":
        import csv

        buffer = io.StringIO()
        fields = [k for k in records[0] if k != "groups"] if records else ["rank", "attribute"]
        if found.has_groups:
            fields.append("groups")
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in records:
            if found.has_groups:
                row = {**row, "groups": "; ".join(f"{g['group']} {100 * g['share']:.0f}%" for g in row["groups"])}
            writer.writerow(row)
        return buffer.getvalue()
    from tabulate import tabulate

    rows = [
        [r["rank"], r["attribute"], r["marks"], f"{r['strength_bits']:.4f}", f"{100 * r['share']:.1f}",
         f"{100 * r['others']:.1f}", f"{r['lift']:.2f}"]
        for r in records
    ]  # fmt: skip
    headers = ["#", "attribute", "marks", "strength (bits)", "share %", "others %", "lift"]
    if found.has_groups:
        for row, r in zip(rows, records, strict=True):
            shown = r["groups"][:GROUPS_SHOWN]
            more = len(r["groups"]) - len(shown)
            text = ", ".join(f"{g['group']} {100 * g['share']:.0f}%" for g in shown) + (f", +{more}" if more else "")
            row.append(text or "none")
        headers.append("groups it lines up with")
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True) if rows else "(no attribute)"
    seconds = found.timing
    speed = found.images_per_second
    images = f"{seconds.get('images', 0):.1f} s" + (
        " (features from the cache)" if speed is None else f" ({speed:.0f} images/s)"
    )
    notes = [
        f"{found.dataset} [{found.split}]: {found.num_images} images"
        + (f" ({found.num_skipped} unreadable, skipped)" if found.num_skipped else "")
        + f", {len(found.classnames)} classes, {found.vocabulary_size} attributes, model {found.model}",
        "strength = the attribute's share of I(attribute; class) in bits (an image's attribute = its best "
        "description with its class held fixed, class directions projected out); share = % of the marked class's "
        "images carrying it; others = % of the other classes' images",
        f"I(attribute; class) = {found.mutual_information:.3f} bits of H(class) = {found.label_entropy:.3f} bits",
        f"time: images {images}, text {seconds.get('text', 0):.1f} s, total {seconds.get('total', 0):.1f} s",
    ]
    if found.has_groups:
        notes.append("groups it lines up with: known groups of which at least 50% of the images carry the attribute")
    return table + "\n" + "".join(f"* {n}\n" for n in notes)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="A torch file holding a list of strings, a JSON list or a text file.")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="The pool's name for --pool (default: the file name).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an imported pool of the same name.")] = False,
) -> None:
    """Import a pool (e.g. the StarFT authors' spurious_bg.pt) so that --pool NAME finds it."""
    from starft_cli.prompts import import_pool

    target, templates, form = import_pool(file, name, force=force)
    typer.echo(f"imported {len(templates)} templates from {file} ({form}) as '{target.stem}': {target}")
    typer.echo(f"use it with: starft finetune ... --pool {target.stem}")


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the shipped and imported pools."""
    from starft_cli.errors import StarftError
    from starft_cli.prompts import imported_pool_names, load_pool, pool_names, user_pool_dir

    rows = []
    for name in pool_names():
        pool = load_pool(name)
        rows.append({"name": name, "kind": "shipped", "templates": len(pool), "example": pool[0], "path": None})
    for name in imported_pool_names():
        path = user_pool_dir() / f"{name}.txt"
        try:
            pool = load_pool(name)
        except StarftError as exc:  # a damaged imported file is listed, not fatal
            rows.append({"name": name, "kind": "imported", "templates": None, "example": f"unreadable: {exc}",
                         "path": str(path)})  # fmt: skip
            continue
        rows.append({"name": name, "kind": "imported", "templates": len(pool), "example": pool[0], "path": str(path)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from tabulate import tabulate

    table = [[r["name"], r["kind"], "?" if r["templates"] is None else r["templates"], r["example"]] for r in rows]
    typer.echo(tabulate(table, headers=["name", "kind", "templates", "first template"], tablefmt="simple",
                        disable_numparse=True))  # fmt: skip
    typer.echo(f"\nImported pools live in {user_pool_dir()} (starft pool import FILE --name NAME).")


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="A shipped or imported pool's name, or a pool file.")],
) -> None:
    """Print a pool's templates, one per line (the text pool format)."""
    from starft_cli.prompts import find_pool, load_pool

    kind, path = find_pool(name)
    pool = load_pool(name)
    where = f" ({path})" if path is not None else ""
    typer.echo(f"# {name}: {kind} pool, {len(pool)} templates{where}")
    for template in pool:
        typer.echo(template)


COMMANDS = [Command("pool", app)]
