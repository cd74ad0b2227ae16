"""``starft data``'s core: describe, check and download registered datasets."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.data.base import CheckReport
from starft_cli.data.registry import DatasetInfo, check_layout, get_builder, is_generic, root_for
from starft_cli.errors import DataError, DataRootError, ImageError

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
    when other problems exist) and report the unreadable ones and the conversions reading applies (16-bit,
    animated, alpha...). ``splits`` narrows the check where the registration says it can (``check_splits``:
    ImageNet). ``classnames_file`` names the classes of ``folder:``/``csv:`` data. A registered dataset's report
    says in ``get_it`` where to get it and how to lay it out.

    Raises :class:`DataError` for an unknown name, :class:`~starft_cli.errors.DataRootError` when a registered,
    non-generated dataset has no ``data_root``."""
    if is_generic(name):
        report = _check_generic(name, deep, progress, classnames_file)
        report.problems = list(dict.fromkeys(report.problems))
        return report
    builder = get_builder(name)
    root = root_for(builder, data_root)
    report = check_layout(builder, root, splits)  # a generated dataset is generated first (again when damaged)
    report.get_it = instructions(builder.info, data_root)[1:]
    if deep and root.exists():
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
            bad = _unreadable(ds, progress, notes)
            report.counts[f"{split} unreadable"] = len(bad)
            if bad:
                report.problems.append(f"{split}: {len(bad)} unreadable image(s), e.g. {bad[0]}")
        report.notes.extend(conversion_lines(notes))
    report.problems = list(dict.fromkeys(report.problems))  # a problem shared by several splits shows once
    return report


def _unreadable(ds: Any, progress: Callable[[int, int], None] | None, notes: Counter[str] | None = None) -> list[str]:
    """Decode every image of ``ds`` as training and evaluation do (:func:`starft_cli.images.read_image`); the
    messages of those that fail. ``notes`` counts the conversions applied (16-bit, animated, alpha, ...)."""
    from starft_cli.images import read_image

    paths = getattr(ds, "paths", None)
    bad: list[str] = []
    for index in range(len(ds)):
        try:
            if paths is not None:
                if not paths[index].is_file():
                    continue  # a missing file is reported by the layout check
                _, applied = read_image(paths[index])
                if notes is not None:
                    notes.update(applied)
            else:
                ds.get_image(index)
        except ImageError as exc:
            bad.append(exc.message)
        if progress is not None:
            progress(index + 1, len(ds))
    return bad


def conversion_lines(notes: Counter[str]) -> list[str]:
    """One line per kind of conversion that reading the images applies, e.g. ``3 image(s) are 16-bit: ...``."""
    from starft_cli.images import CONVERSION_NOTES

    return [f"{notes[key]} image(s) {CONVERSION_NOTES[key]}" for key in CONVERSION_NOTES if notes.get(key)]


def _check_generic(
    ref: str, deep: bool, progress: Callable[[int, int], None] | None, classnames_file: str | Path | None = None
) -> CheckReport:
    """``folder:PATH`` / ``csv:PATH``: loadable, every listed file present, counts per class; with ``deep``, every
    image decoded (for a folder, every image file under it even when it does not load as a dataset)."""
    from starft_cli.data.generic import image_files_under
    from starft_cli.data.registry import resolve

    root = Path(ref.split(":", 1)[1]).expanduser()
    report = CheckReport(name=ref, root=root)
    try:
        ds = resolve(ref, classnames_file=classnames_file)  # folder:/csv: data load or raise
    except DataError as exc:
        report.problems.extend(getattr(exc, "problems", None) or [exc.one_line()])
        if deep and ref.startswith("folder:") and root.is_dir():
            _deep_generic(report, _Files(image_files_under(root)), progress)
        return report
    report.counts["images"] = len(ds)
    report.counts["classes"] = len(ds.classnames)
    for label, count in sorted(Counter(ds.labels).items()):
        report.counts[f"class {ds.classnames[label]}"] = count
    if ds.groups is not None and ds.group_names is not None:
        per_group = Counter(ds.groups)
        for g, group in enumerate(ds.group_names):
            report.counts[f"group {group}"] = per_group.get(g, 0)
    absent = [p for p in ds.paths if not p.is_file()]
    if absent:
        report.problems.append(f"{len(absent)} listed image(s) are missing (e.g. {absent[0]})")
    if deep:
        _deep_generic(report, ds, progress)
    return report


class _Files:
    """Image files to decode when they do not load as a dataset (what :func:`_unreadable` needs of one)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)


def _deep_generic(report: CheckReport, ds: Any, progress: Callable[[int, int], None] | None) -> None:
    notes: Counter[str] = Counter()
    bad = _unreadable(ds, progress, notes)
    report.counts["unreadable"] = len(bad)
    if bad:
        report.problems.append(f"{len(bad)} unreadable image(s), e.g. {bad[0]}")
    report.notes.extend(conversion_lines(notes))


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
    root.mkdir(parents=True, exist_ok=True)
    try:
        info.download(root)
    except Exception as exc:  # network and checksum failures from torchvision's downloader
        raise DataError(
            f"downloading {name} failed ({' '.join(str(exc).split())[:200]})",
            "Check the network, or get it by hand: " + "; ".join(instructions(info, data_root)[1:]),
        ) from exc
    return DownloadResult(name=name, root=root / info.folder, downloaded=True)
