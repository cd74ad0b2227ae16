"""``starft data``'s core: describe, check and download registered datasets."""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.data.base import CheckReport
from starft_cli.data.registry import dataset_root, get_builder
from starft_cli.errors import DataError, ImageError

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
    animated, alpha...). ``splits`` narrows the check where a builder supports it (ImageNet: evaluation need not
    scan the training set). ``classnames_file`` names the classes of ``folder:``/``csv:`` data."""
    if name.startswith(("folder:", "csv:")):
        report = _check_generic(name, deep, progress, classnames_file)
        report.problems = list(dict.fromkeys(report.problems))
        return report
    builder = get_builder(name)
    root = dataset_root(name, data_root)
    if getattr(builder, "generated", False):
        builder.ensure(root)  # generated on first use (and again when damaged)
    if not root.exists():
        report = CheckReport(name=name, root=root)
        report.problems.append(f"missing folder {root}")
        return report
    if splits is not None and "splits" in inspect.signature(builder.check).parameters:
        report = builder.check(root, splits=splits)
    else:
        report = builder.check(root)
    if deep:
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
    from starft_cli.data.registry import load_dataset

    root = Path(ref.split(":", 1)[1]).expanduser()
    report = CheckReport(name=ref, root=root)
    try:
        ds = load_dataset(ref, classnames_file=classnames_file)
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


def _tv_download(cls_name: str, **kwargs: Any) -> Callable[[Path], None]:
    def run(data_root: Path) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, cls_name)(str(data_root), download=True, **kwargs)

    return run


def _imagenet_v2_download(data_root: Path) -> None:
    from huggingface_hub import hf_hub_download
    from torchvision.datasets.utils import extract_archive

    archive = hf_hub_download("vaishaal/ImageNetV2", "imagenetv2-matched-frequency.tar.gz", repo_type="dataset")
    extract_archive(archive, str(data_root))  # -> imagenetv2-matched-frequency-format-val/<class index>/


def _generate_digits(data_root: Path) -> None:
    from starft_cli.data import digits

    digits.ensure(data_root / digits.NAME)


DOWNLOADERS: dict[str, Callable[[Path], None]] = {
    "spurious-digits": _generate_digits,
    "imagenet-v2": _imagenet_v2_download,
    "cifar10": _tv_download("CIFAR10", train=False),
    "cifar100": _tv_download("CIFAR100", train=False),
    "stl10": _tv_download("STL10", split="test"),
    "caltech101": _tv_download("Caltech101"),
    "flowers102": _tv_download("Flowers102", split="test"),
}


def instructions(name: str, data_root: str | Path | None) -> list[str]:
    """Where to get a dataset and how to lay it out."""
    info = get_builder(name).info
    where = Path(data_root).expanduser() / info.folder if data_root else Path("DATA_ROOT") / info.folder
    return [f"{info.title}", f"get it from: {info.source}", f"lay it out as: {info.layout}", f"expected at: {where}"]


def download_dataset(name: str, data_root: str | Path) -> DownloadResult:
    """Fetch a dataset where a public, stable source exists (torchvision's checksummed downloaders; ImageNet-V2
    from its Hugging Face dataset repository); otherwise return instructions and download nothing."""
    get_builder(name)
    root = Path(data_root).expanduser()
    target = root / get_builder(name).info.folder
    downloader = DOWNLOADERS.get(name)
    if downloader is None:
        return DownloadResult(name=name, root=target, downloaded=False, instructions=instructions(name, data_root))
    root.mkdir(parents=True, exist_ok=True)
    try:
        downloader(root)
    except Exception as exc:  # network and checksum failures from torchvision's downloader
        raise DataError(
            f"downloading {name} failed ({' '.join(str(exc).split())[:200]})",
            "Check the network, or get it by hand: " + "; ".join(instructions(name, data_root)[1:]),
        ) from exc
    return DownloadResult(name=name, root=target, downloaded=True)
