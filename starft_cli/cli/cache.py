"""``starft cache list | clear``: what starft's own caches hold, and emptying them.

Every entry of these caches is recomputed (or regenerated, rebuilt) when missing, so clearing one only costs time.
Downloaded model weights are not here: they live in the Hugging Face cache (``starft zoo rm NAME`` deletes a zoo
model's weights); locally built models (the demo's) and generated datasets are.
"""

from __future__ import annotations

import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from starft_cli.cli.command import Command

app = typer.Typer(
    help="starft's caches (zero-shot heads, eval features, spurious text banks, zoo verification records, generated "
    "datasets, locally built models).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class CacheKind(StrEnum):
    heads = "heads"
    features = "features"
    bank = "bank"
    zoo_verify = "zoo-verify"
    datasets = "datasets"
    models = "models"


# kind -> (sub-folder of the cache directory, what it holds)
KINDS: dict[CacheKind, tuple[tuple[str, ...], str]] = {
    CacheKind.heads: (("heads",), "zero-shot heads (classify, eval)"),
    CacheKind.features: (("features",), "image features of evaluated datasets (eval)"),
    CacheKind.bank: (("spurious_bank",), "teacher spurious-text banks (finetune)"),
    CacheKind.zoo_verify: (("zoo", "verified"), "records of zoo files whose sha256 was verified"),
    CacheKind.datasets: (("datasets",), "generated datasets (spurious-digits)"),
    CacheKind.models: (("models",), "locally built models (the demo's zero-shot model, its unfinished builds)"),
}

KindOpt = Annotated[
    list[CacheKind] | None,
    typer.Option("--kind", help="Only this cache (repeatable; default: all of them)."),
]


def cache_usage(kind: CacheKind) -> tuple[Path, int, int]:
    """``(folder, number of files, bytes)`` of one cache (0, 0 when it does not exist)."""
    from starft_cli.paths import cache_path

    folder = cache_path(*KINDS[kind][0])
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    return folder, len(files), sum(p.stat().st_size for p in files)


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


@app.command("list")
def list_command(
    kind: KindOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (sizes in bytes).")] = False,
) -> None:
    """Show each cache's folder, number of files and size."""
    from starft_cli.pretrained import hub_cache_dir

    kinds = list(dict.fromkeys(kind or list(KINDS)))
    rows = []
    for k in kinds:
        folder, count, size = cache_usage(k)
        rows.append({"kind": k.value, "files": count, "bytes": size, "path": str(folder), "holds": KINDS[k][1]})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from tabulate import tabulate

    table = [[r["kind"], r["files"], human_size(r["bytes"]), r["path"]] for r in rows]
    typer.echo(tabulate(table, headers=["cache", "files", "size", "folder"], tablefmt="simple", disable_numparse=True))
    total = sum(r["bytes"] for r in rows)
    typer.echo(f"\ntotal {human_size(total)}; `starft cache clear [--kind KIND]` empties them (they are rebuilt)")
    typer.echo(
        f"downloaded model weights are in the Hugging Face cache ({hub_cache_dir()}): `starft zoo rm NAME` deletes some"
    )


@app.command("clear")
def clear_command(kind: KindOpt = None) -> None:
    """Delete the files of the chosen caches (default: all of them); they are recomputed when needed."""
    kinds = list(dict.fromkeys(kind or list(KINDS)))
    for k in kinds:
        folder, count, size = cache_usage(k)
        if folder.is_dir():
            shutil.rmtree(folder)
        typer.echo(f"{k.value}: removed {count} file(s), {human_size(size)} ({folder})")


COMMANDS = [Command("cache", app)]
