"""Helpers shared by the dataset builders: counting, folder checks, asset files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from starft_cli.data.base import CheckReport
from starft_cli.images import is_image_name


@cache
def asset_lines(name: str) -> tuple[str, ...]:
    """Non-blank, non-comment lines of a shipped asset file."""
    text = resources.files("starft_cli.data").joinpath("assets", name).read_text(encoding="utf-8")
    return tuple(line.rstrip("\n") for line in text.splitlines() if line.strip() and not line.startswith("#"))


def asset_table(name: str) -> dict[str, str]:
    """A two-column TSV asset (header skipped) as a dict."""
    rows = [line.split("\t") for line in asset_lines(name)[1:]]
    return {r[0]: r[1] for r in rows}


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_files(report: CheckReport, root: Path, names: Sequence[str]) -> bool:
    """Add a problem for each missing file or folder; True when all exist."""
    ok = True
    for name in names:
        if not (root / name).exists():
            report.problems.append(f"missing {root / name}")
            ok = False
    return ok


def count_into(report: CheckReport, prefix: str, labels: Sequence[int], classnames: Sequence[str]) -> None:
    """``<prefix> images`` and ``<prefix> classes`` counts, plus a note naming classes without images."""
    report.counts[f"{prefix} images"] = len(labels)
    present = Counter(labels)
    report.counts[f"{prefix} classes"] = len(present)
    empty = [classnames[c] for c in range(len(classnames)) if c not in present]
    if empty and len(empty) < len(classnames):
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        report.notes.append(f"{prefix}: {len(empty)} of {len(classnames)} classes have no images ({shown})")


def count_groups(report: CheckReport, prefix: str, groups: Sequence[int], group_names: Sequence[str]) -> None:
    """One ``<prefix> group <name>`` count per group; a problem for a group without images."""
    present = Counter(groups)
    for g, name in enumerate(group_names):
        report.counts[f"{prefix} group {name}"] = present.get(g, 0)
        if present.get(g, 0) == 0:
            report.problems.append(f"{prefix}: group '{name}' has no images (worst-group accuracy needs every group)")


def torchvision_download(cls_name: str, **kwargs: Any) -> Callable[[Path], None]:
    """A registration's ``download``: torchvision's checksummed downloader ``cls_name`` into the data root."""

    def run(data_root: Path) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, cls_name)(str(data_root), download=True, **kwargs)

    return run
