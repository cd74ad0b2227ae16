"""``starft data``'s core: describe, check and download registered datasets."""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.data.base import CheckReport
from starft_cli.data.checks import unreadable_images
from starft_cli.data.registry import DatasetInfo, check_layout, get_builder, is_generic, root_for
from starft_cli.errors import DataError, DataRootError

logger = logging.getLogger(__name__)


def check_dataset(
    name: str,
    data_root: str | Path | None,
    deep: bool = False,
    progress: Callable[[int, int], None] | None = None,
    splits: tuple[str, ...] | None = None,
    classnames_file: str | Path | None = None,
) -> CheckReport:
    """Check a dataset's layout (a registered name under ``data_root``, ``folder:PATH`` or ``csv:PATH``) and list
    every problem found, not only the first. With ``deep``, also decode every image that can be enumerated (even
    when other problems exist) and report the unreadable ones (the count, and the first :data:`SHOWN` by name) and
    the conversions reading applies (16-bit, animated, alpha...). ``splits`` narrows the check where the
    registration says it can (``check_splits``: ImageNet). ``classnames_file`` names the classes of
    ``folder:``/``csv:`` data. A registered dataset's report says in ``get_it`` where to get it and how to lay it
    out. A check writes nothing: a generated dataset that is absent or damaged is reported, with the command that
    generates it, not generated.

    Raises :class:`DataError` for an unknown name, :class:`~starft_cli.errors.DataRootError` when a registered,
    non-generated dataset has no ``data_root``."""
    if is_generic(name):
        report = _check_generic(name, deep, progress, classnames_file)
        report.problems = list(dict.fromkeys(report.problems))
        return report
    builder = get_builder(name)
    root = root_for(builder, data_root)
    report = check_layout(builder, root, splits, generate=False)
    report.get_it = instructions(builder.info, data_root)[1:]
    if deep and root.exists() and not (builder.info.generated and not report.ok):
        notes: Counter[str] = Counter()
        for split in splits or builder.info.splits:
            try:
                ds = builder.build(root, split)
            except DataError as exc:
                report.problems.append(f"{split}: {exc.message}")
                continue
            except Exception as exc:  # a layout too broken to list its images: the check above names why
                if report.ok:
                    raise
                logger.debug("%s %s: images not listed (%s)", name, split, exc)
                continue
            _deep_into(report, ds, progress, notes, f"{split} ")
        report.notes.extend(conversion_lines(notes))
    report.problems = list(dict.fromkeys(report.problems))  # a problem shared by several splits shows once
    report.notes = list(dict.fromkeys(report.notes))
    return report


SHOWN = 5  # unreadable images named one by one in a check report; the rest are counted


def _deep_into(
    report: CheckReport,
    ds: Any,
    progress: Callable[[int, int], None] | None,
    notes: Counter[str],
    prefix: str = "",
) -> None:
    """Decode every image of ``ds`` (:func:`~starft_cli.data.checks.unreadable_images`; missing files are the
    layout check's): ``<prefix>unreadable`` counted, and one problem naming the first :data:`SHOWN` with their
    reasons (``report.unreadable`` lists every one)."""
    bad = unreadable_images(ds, progress, notes, skip_missing=True)
    report.counts[f"{prefix}unreadable"] = len(bad)
    if bad:
        named = "; ".join(item.message for item in bad[:SHOWN])
        more = f"; and {len(bad) - SHOWN} more (`--json` lists every one)" if len(bad) > SHOWN else ""
        where = f"{prefix.strip()}: " if prefix else ""
        report.problems.append(f"{where}{len(bad)} unreadable image(s): {named}{more}")
    report.unreadable.extend(ds.describe(item.index) if hasattr(ds, "describe") else item.message for item in bad)


def conversion_lines(notes: Counter[str]) -> list[str]:
    """One line per kind of conversion that reading the images applies, e.g. ``3 image(s) are 16-bit: ...``."""
    from starft_cli.images import CONVERSION_NOTES

    return [f"{notes[key]} image(s) {CONVERSION_NOTES[key]}" for key in CONVERSION_NOTES if notes.get(key)]


def _check_generic(
    ref: str, deep: bool, progress: Callable[[int, int], None] | None, classnames_file: str | Path | None = None
) -> CheckReport:
    """``folder:PATH`` / ``csv:PATH``: loadable, every listed file present, counts per class (per split and class
    for a ``PATH/<split>/<class>/`` folder, by the rule every command uses: :func:`generic.folder_split`); with
    ``deep``, every image decoded (for a folder, every image file under it even when it does not load as a
    dataset)."""
    from starft_cli.data.generic import image_files_under, split_folders
    from starft_cli.data.registry import load_generic

    root = Path(ref.split(":", 1)[1]).expanduser()
    report = CheckReport(name=ref, root=root)
    splits: list[str | None] = [None]
    try:
        if ref.startswith("folder:") and root.is_dir():
            splits = list(split_folders(root)) or [None]
    except DataError as exc:
        report.problems.append(exc.one_line())
        splits = []
    notes: Counter[str] = Counter()
    classes: dict[str, list[str]] = {}
    for split in splits:
        prefix = f"{split} " if split else ""
        try:
            ds = load_generic(ref, split, classnames_file)  # folder:/csv: data load or raise
        except DataError as exc:
            report.problems.extend(f"{prefix}{p}".strip() for p in getattr(exc, "problems", None) or [exc.one_line()])
            continue
        classes[ds.split or ""] = list(ds.classnames)
        report.counts[f"{prefix}images"] = len(ds)
        report.counts[f"{prefix}classes"] = len(ds.classnames)
        for label, count in sorted(Counter(ds.labels).items()):
            report.counts[f"{prefix}class {ds.classnames[label]}"] = count
        if ds.groups is not None and ds.group_names is not None:
            per_group = Counter(ds.groups)
            for g, group in enumerate(ds.group_names):
                report.counts[f"{prefix}group {group}"] = per_group.get(g, 0)
        report.notes.extend(f"{prefix}{line}".strip() for line in ds.left_out)
        absent = [p for p in ds.paths if not p.is_file()]
        if absent:
            report.problems.append(f"{prefix}{len(absent)} listed image(s) are missing (e.g. {absent[0]})".strip())
        if deep:
            _deep_into(report, ds, progress, notes, prefix)
    if len({tuple(c) for c in classes.values()}) > 1:
        every = sorted({c for names in classes.values() for c in names})
        lacks = [f"{s} lacks {', '.join(c for c in every if c not in names)}" for s, names in classes.items()]
        report.notes.append(
            f"the splits have different class folders ({'; '.join(x for x in lacks if not x.endswith('lacks '))}): "
            "class indices differ between them"
        )
    if deep and not classes and ref.startswith("folder:") and root.is_dir():
        _deep_into(report, _Files(image_files_under(root)), progress, notes)
    report.notes.extend(conversion_lines(notes))
    return report


class _Files:
    """Image files to decode when they do not load as a dataset (what :func:`unreadable_images` needs of one)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return str(self.paths[index])


@dataclass
class DownloadResult:
    name: str
    root: Path
    downloaded: bool
    instructions: list[str] = field(default_factory=list)


def instructions(dataset: str | DatasetInfo, data_root: str | Path | None) -> list[str]:
    """Where to get a dataset (a registered name, or its info) and how to lay it out: its title, then one line
    each for the source, the layout and the folder expected."""
    info = dataset if isinstance(dataset, DatasetInfo) else get_builder(dataset).info
    if info.generated:
        where = Path(data_root).expanduser() / info.folder if data_root else get_builder(info.name).default_root()
        command = f"starft data download {info.name}" + (f" --data-root {data_root}" if data_root else "")
        return [f"{info.title}", f"generate it with: {command}", f"expected at: {where}"]
    where = Path(data_root).expanduser() / info.folder if data_root else Path("DATA_ROOT") / info.folder
    return [f"{info.title}", f"get it from: {info.source}", f"lay it out as: {info.layout}", f"expected at: {where}"]


def download_dataset(name: str, data_root: str | Path | None) -> DownloadResult:
    """Fetch a dataset where its registration has a ``download`` (torchvision's checksummed downloaders; ImageNet-V2
    from its Hugging Face dataset repository; a generated dataset is generated, by default into the cache);
    otherwise download nothing and return instructions (``downloaded`` False).

    Raises :class:`~starft_cli.errors.DataRootError` when there is something to download and no ``data_root``,
    :class:`DataError` when the download fails."""
    builder = get_builder(name)
    info = builder.info
    if info.download is None:
        return DownloadResult(
            name=name,
            root=Path(data_root or "DATA_ROOT").expanduser() / info.folder,
            downloaded=False,
            instructions=instructions(info, data_root),
        )
    if data_root is None and info.generated:
        data_root = builder.default_root().parent  # type: ignore[attr-defined]
    if data_root is None:
        raise DataRootError("data download needs `data_root`", "Name the folder to download into", param="data_root")
    root = Path(data_root).expanduser()
    _require_writable(root, name)
    try:
        info.download(root)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise _not_writable(root, name, exc) from exc
        raise _download_failed(name, info, data_root, exc) from exc
    except Exception as exc:  # network and checksum failures from torchvision's downloader
        raise _download_failed(name, info, data_root, exc) from exc
    return DownloadResult(name=name, root=root / info.folder, downloaded=True)


_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR})


def _require_writable(root: Path, name: str) -> None:
    """Create ``root`` and write a temporary file in it, so that a folder that cannot take the dataset is said
    so before anything is downloaded or generated.

    Raises:
        DataError: :func:`_not_writable`.
    """
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise _not_writable(root, name, exc) from exc


def _not_writable(root: Path, name: str, exc: OSError) -> DataError:
    """The one-line error for a data root that cannot be written (permissions, a read-only file system, a full
    disk, a file where a folder should be)."""
    why = {
        errno.ENOSPC: "no space left",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOTDIR: "not a folder",
        errno.EEXIST: "not a folder",  # mkdir of a path that is a file
    }.get(exc.errno or 0, "not writable")
    where = f": {exc.filename}" if exc.filename and Path(exc.filename) != root else ""
    return DataError(
        f"cannot write {name} into {root}: {why} ({exc.strerror or exc}{where})",
        "Choose a writable `data_root`, or free space / fix the folder's permissions",
        param="data_root",
    )


def _download_failed(name: str, info: DatasetInfo, data_root: str | Path, exc: Exception) -> DataError:
    return DataError(
        f"downloading {name} failed ({' '.join(str(exc).split())[:200]})",
        "Check the network, or get it by hand: " + "; ".join(instructions(info, data_root)[1:]),
    )
