"""ImageNet (ILSVRC-2012) in the usual wnid-folder layout."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import image_files
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.images import ImageListing


@cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The 1000 ImageNet wnids (sorted, the standard label order) and their OpenAI class names."""
    text = resources.files("starft_cli.data").joinpath("assets", "imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def scan_wnid_folders(root: Path, listing: ImageListing | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Images under ``root/<wnid>/``: paths, labels (ImageNet indices) and problems found; ``listing`` counts the
    files left out (macOS ``._*`` files)."""
    wnids, _ = imagenet_classes()
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    problems: list[str] = []
    if not root.is_dir():
        return paths, labels, [f"missing folder {root}"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            problems.append(f"{folder} is not an ImageNet wnid folder")
            continue
        files = image_files(folder, listing)
        paths.extend(files)
        labels.extend([index[folder.name]] * len(files))
    if not paths and not problems:
        problems.append(f"no images in wnid folders under {root}")
    return paths, labels, problems


@register_dataset(
    "imagenet",
    title="ImageNet (ILSVRC-2012)",
    folder="imagenet",
    layout="imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG (val sorted into wnid folders)",
    source="https://image-net.org (registration required); sort val into wnid folders with the devkit labels",
    splits=("train", "val"),
    default_split="val",
    templates="imagenet80",
    check_splits=True,
)
class ImageNet(Builder):
    def build(self, root: Path, split: str) -> FileImageDataset:
        _, names = imagenet_classes()
        listing = ImageListing()
        paths, labels, _ = scan_wnid_folders(root / split, listing)
        return self.dataset(
            FileImageDataset,
            listing,
            classnames=names,
            labels=labels,
            paths=paths,
            duplicate_classnames_ok=True,  # OpenAI's list names two pairs alike (missile, sunglasses), as published
        )

    def check(self, root: Path, splits: tuple[str, ...] | None = None) -> CheckReport:
        """Check the given splits, all by default (evaluation checks only the split it reads: scanning 1.28M
        training files is slow). A split folder is required when asked for, or when it is the default split."""
        report = self.report(root)
        for split in splits or self.info.splits:
            if not (root / split).is_dir():
                if splits is not None or split == self.info.default_split:
                    report.problems.append(f"missing folder {root / split}")
                continue
            listing = ImageListing()
            paths, labels, problems = scan_wnid_folders(root / split, listing)
            report.problems.extend(problems)
            report.notes.extend(f"{split}: {line}" for line in listing.notes())
            report.counts[f"{split} images"] = len(paths)
            report.counts[f"{split} classes"] = len(set(labels))
        return report
