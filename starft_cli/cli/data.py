"""``starft data list | check NAME | download NAME``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.flags import with_flags

app = typer.Typer(
    help="Benchmark datasets: list them, check their layout, download where a public source exists.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DataRootOpt = Annotated[
    Path | None, typer.Option("--data-root", envvar="STARFT_DATA_ROOT", help="Folder holding the datasets.")
]


@app.command("list")
def list_command(
    data_root: DataRootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the registered datasets (with --data-root: whether each is present)."""
    from starft_cli.data.registry import get_builder, list_datasets, root_for

    rows = []
    for name in list_datasets():
        builder = get_builder(name)
        info = builder.info
        row = {
            "name": name,
            "title": info.title,
            "folder": info.folder,
            "splits": list(info.splits),
            "download": "yes" if info.download is not None or _fetchable(name) else "manual",
        }
        if data_root is not None:
            row["present"] = root_for(builder, data_root).exists()
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(_list_text(rows, shutil.get_terminal_size((100, 24)).columns))
    typer.echo("\nAlso: folder:PATH (one folder per class) and csv:PATH (filepath,label[,caption]).")


def _fetchable(name: str) -> bool:
    """Whether `starft data download` fetches ``name`` from its Hub copy or a public source."""
    from starft_cli.data.sources.hub import hub_copy
    from starft_cli.data.sources.public import PUBLIC_SOURCES

    return hub_copy(name) is not None or name in PUBLIC_SOURCES


def _list_text(rows: list[dict], width: int) -> str:
    """Two lines per dataset, wrapped to ``width`` columns (at least 60): name and title, then the folder under
    --data-root, the splits, whether `starft data download` fetches it and (with --data-root) whether it is there.
    Lines break between items only."""
    import textwrap

    width = max(60, width)
    indent = max(len(r["name"]) for r in rows) + 2
    pad = " " * indent
    lines = []
    for r in rows:
        lines += textwrap.wrap(r["title"], width, initial_indent=f"{r['name']:<{indent}}", subsequent_indent=pad)
        items = [
            f"folder {r['folder']}/",
            f"splits {','.join(r['splits'])}",
            "starft data download" if r["download"] == "yes" else "manual download",
        ]
        if "present" in r:
            items.append("present" if r["present"] else "not present")
        line = pad + items[0]
        for item in items[1:]:
            if len(f"{line} · {item}") > width:
                lines.append(line)
                line = pad + item
            else:
                line = f"{line} · {item}"
        lines.append(line)
    return "\n".join(lines)


@app.command("check")
def check_command(
    name: Annotated[
        str, typer.Argument(help="A registered dataset (see `starft data list`), folder:PATH or csv:PATH.")
    ],
    data_root: DataRootOpt = None,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep", help="Also decode every image: report unreadable ones and conversions (16-bit, animated...)."
        ),
    ] = False,
    classnames: Annotated[
        Path | None,
        typer.Option("--classnames", help="Class names file (one per line) for folder:/csv: data, as eval takes."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a dataset's layout: counts per split/class/group, and every problem with how to fix it."""
    from starft_cli.data.manage import check_dataset
    from starft_cli.data.registry import is_generic
    from starft_cli.errors import UsageError

    if classnames is not None and not is_generic(name):
        raise UsageError("--classnames applies to folder:PATH and csv:PATH data", "Drop it for a registered dataset")
    # an unknown name fails with close matches; a registered one (not generated) without --data-root, with a usage
    # error naming the folder it needs
    report = check_dataset(name, data_root, deep=deep, classnames_file=classnames)
    if as_json:
        payload = {
            "name": name,
            "root": str(report.root),
            "ok": report.ok,
            "problems": [with_flags(p) for p in report.problems],
            "counts": report.counts,
            "notes": report.notes,
            "unreadable": report.unreadable,
        }
        typer.echo(json.dumps(payload, indent=2))
    else:
        typer.echo(f"{name} at {report.root}: {'OK' if report.ok else 'PROBLEMS'}")
        for key, value in report.counts.items():
            typer.echo(f"  {key}: {value}")
        for note in report.notes:
            typer.echo(f"  note: {note}")
        for problem in report.problems:
            typer.echo(f"  problem: {with_flags(problem)}")
        if not report.ok:
            for line in report.get_it:
                typer.echo(f"  {line}")
    if not report.ok:
        from starft_cli.errors import DataError

        raise DataError(f"{name} is not laid out right ({len(report.problems)} problem(s) above)")


@app.command("download")
def download_command(
    name: Annotated[str, typer.Argument(help="A registered dataset (see `starft data list`).")],
    data_root: DataRootOpt = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split of the Hub copy to fetch (default: its test split).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch the Hub copy again even when it is cached.")] = False,
    original: Annotated[
        bool,
        typer.Option("--original", help="Fetch the original release into --data-root, not the Hub copy."),
    ] = False,
) -> None:
    """Download a dataset: its webdataset copy on the Hugging Face Hub where one is registered (into the Hugging
    Face cache; eval finds it there), else its public source; otherwise say where to get it and how to lay it
    out."""
    from starft_cli.data.manage import download_dataset
    from starft_cli.data.registry import get_builder
    from starft_cli.data.sources import hub
    from starft_cli.data.sources.public import NEEDS_LOGIN, PUBLIC_SOURCES, fetch_public
    from starft_cli.errors import DataError

    get_builder(name)  # an unknown name fails with close matches
    if name in NEEDS_LOGIN and split not in (None, "val"):
        raise DataError(NEEDS_LOGIN[name])
    if hub.hub_copy(name) is not None and not original:
        ds = hub.download(name, split, force=force, announce=_announce)
        source = ds.source
        typer.echo(
            f"{name} ({source['split']}): {len(ds)} samples, {len(ds.index.shards)} shard(s) from "
            f"{source['repo']}@{source['revision'][:12]} in {hub.hub_cache()}"
        )
        return
    if split is not None or force:
        raise DataError(f"--split and --force apply to Hub copies; {name} has none", "Drop them")
    if name in PUBLIC_SOURCES:
        if data_root is None:
            from starft_cli.errors import DataRootError

            raise DataRootError(f"{name} is extracted into a data root", "Name it", param="data_root")
        folder, hashes = fetch_public(name, data_root)
        for line in hashes:
            typer.echo(f"verified {line}", err=True)
        typer.echo(f"downloaded {name} to {folder}")
        return
    result = download_dataset(name, data_root)  # a generated dataset without --data-root goes into the cache
    if not result.downloaded:
        typer.echo(f"{name} has no public, stable download source that starft can fetch; get it by hand:")
        for line in result.instructions:
            typer.echo(f"  {line}")
        raise DataError(  # exit 1: nothing was downloaded, so a script must not go on as if it had been
            f"{name} was not downloaded (no public download source)",
            f"Get it by hand as above, then run `starft data check {name} --data-root DATA_ROOT`",
        )
    typer.echo(f"downloaded {name} to {result.root}")


def _announce(plan: object) -> None:
    """One line on stderr before a Hub copy is fetched: what, how many files, how many bytes."""
    from starft_cli.data.sources.hub import LARGE_BYTES, Plan

    assert isinstance(plan, Plan)
    if not plan.files:
        return
    size = plan.total_bytes
    shown = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    note = " (a large download; it resumes if interrupted)" if size >= LARGE_BYTES else ""
    typer.echo(
        f"fetching {plan.copy.dataset} ({plan.split}) from {plan.copy.repo}@{plan.commit[:12]}: {len(plan.files)} "
        f"file(s), {shown}{note}",
        err=True,
    )


COMMANDS = [Command("data", app)]
