"""Helpers shared by the dataset builders: counting, folder checks, asset files."""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from starft_cli.data.base import CheckReport
from starft_cli.errors import DataError, ImageError
from starft_cli.images import MACOS_FOLDER, ImageListing


@cache
def asset_lines(name: str) -> tuple[str, ...]:
    """Non-blank, non-comment lines of a shipped asset file."""
    text = resources.files("starft_cli.data").joinpath("assets", name).read_text(encoding="utf-8")
    return tuple(line.rstrip("\n") for line in text.splitlines() if line.strip() and not line.startswith("#"))


def asset_table(name: str) -> dict[str, str]:
    """A two-column TSV asset (header skipped) as a dict."""
    rows = [line.split("\t") for line in asset_lines(name)[1:]]
    return {r[0]: r[1] for r in rows}


def image_files(folder: Path, listing: ImageListing | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted; ``listing`` (a fresh one by default) counts what was left out
    (macOS ``._*`` companion files: see :class:`~starft_cli.images.ImageListing`)."""
    return (listing if listing is not None else ImageListing()).add(folder, recursive=False)


def subfolders(folder: Path, listing: ImageListing | None = None) -> list[Path]:
    """The sub-folders of ``folder`` (symlinked ones included), sorted; hidden ones and macOS's ``__MACOSX`` (zip
    metadata) are left out, the latter counted in ``listing`` when given."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name == MACOS_FOLDER and listing is not None:
            listing.macos_folders += 1
        elif p.is_dir() and not p.name.startswith(".") and p.name != MACOS_FOLDER:
            found.append(p)
    return found


def read_text(path: Path) -> str:
    """A text file (CSV, class names) as UTF-8; a byte-order mark (Excel's "CSV UTF-8" writes one) is dropped, and
    a file that starts with a UTF-16 byte-order mark (Excel's "Unicode Text") is read as UTF-16.

    Raises:
        DataError: the file cannot be read, or is not UTF-8 (naming the line and the first bad byte).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})", "Check the path and its permissions") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text"
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass  # named below as not UTF-8
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            "Save it as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8 FILE`)",
        ) from None


@dataclass
class CsvTable:
    """A CSV/TSV file read by :func:`read_csv_table`: its header, its rows as dicts with the line each starts on,
    and the problems found (rows whose field count differs from the header's are listed there, not in ``rows``)."""

    path: Path
    header: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the file line of each row (1 = the header)
    problems: list[str] = field(default_factory=list)

    def optional_column(self, options: Sequence[str]) -> str | None:
        """The header name among ``options`` (case ignored, the first option first), None when absent."""
        lowered = {h.lower(): h for h in self.header}
        return next((lowered[o.lower()] for o in options if o.lower() in lowered), None)

    def column(self, options: Sequence[str], what: str) -> str:
        """:meth:`optional_column`, required.

        Raises:
            DataError: no such column (naming the options).
        """
        name = self.optional_column(options)
        if name is None:
            raise DataError(f"{self.path} has no {what} column", f"Name it one of: {', '.join(options)}")
        return name


def read_csv_table(path: Path, delimiter: str | None = None) -> CsvTable:
    """A CSV (or, by its ``.tsv`` suffix or a tab in its header, TSV) file with a header row, as UTF-8 (see
    :func:`read_text`). Blank lines are skipped; a row with more or fewer fields than the header (an unquoted
    delimiter inside a value, a lost column) is a problem naming its line, not a row.

    Raises:
        DataError: the file cannot be read, is not UTF-8, is not parseable CSV, or has no header.
    """
    text = read_text(path)
    first = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise DataError(f"{path} has no header row", "The first line names the columns")
        table = CsvTable(path=path, header=header)
        bad: list[tuple[int, int]] = []
        start = reader.line_num + 1
        for fields in reader:
            number, start = start, reader.line_num + 1
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                bad.append((number, len(fields)))
                continue
            table.rows.append(dict(zip(header, fields, strict=True)))
            table.lines.append(number)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})", "Fix or re-export it") from None
    if bad:
        shown = "; ".join(f"line {n} has {k}" for n, k in bad[:5]) + (
            f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        table.problems.append(
            f"{path}: {len(bad)} row(s) whose number of fields differs from the header's {len(header)} ({shown}). "
            "Quote values that hold the delimiter, and give every row every column"
        )
    return table


@dataclass(frozen=True)
class Unreadable:
    """One image of a dataset that cannot be decoded: its index in the dataset and the one-line reason."""

    index: int
    message: str


def unreadable_images(
    ds: Any,
    progress: Callable[[int, int], None] | None = None,
    notes: Counter[str] | None = None,
    skip_missing: bool = False,
) -> list[Unreadable]:
    """Decode every image of ``ds`` (an :class:`~starft_cli.data.base.ImageDataset`, or anything with ``paths``
    and a length) exactly as training and evaluation read them (:func:`starft_cli.images.read_image`: the full
    decode, so a truncated file is caught), and return those that fail, in dataset order. A missing file is one
    of them unless ``skip_missing`` (a layout check reports it). ``notes`` counts the conversions applied
    (16-bit, animated, alpha, ...; see :data:`~starft_cli.images.CONVERSION_NOTES`); ``progress(done, total)``
    is called after each image. Cost: one full decode per image (no model, no GPU)."""
    from starft_cli.images import read_image

    paths = getattr(ds, "paths", None)
    bad: list[Unreadable] = []
    for index in range(len(ds)):
        try:
            if paths is not None:
                if skip_missing and not paths[index].is_file():
                    continue
                _, applied = read_image(paths[index])
                if notes is not None:
                    notes.update(applied)
            else:
                ds.get_image(index)
        except ImageError as exc:
            bad.append(Unreadable(index, exc.message))
        if progress is not None:
            progress(index + 1, len(ds))
    return bad


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
