"""ImageNet's distribution shifts: ImageNet-V2, ImageNet-Sketch, and ImageNet-R / ImageNet-A (one builder).

All share ImageNet's 1000-class label space and class names. ImageNet-R and ImageNet-A cover 200 classes
each; their subset is derived from the wnid folders present (in ImageNet order) and stored as
``class_subset``, so the evaluation restricts the 1000-way logits to those classes.
"""

from __future__ import annotations

from pathlib import Path

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import asset_lines, count_into, image_files, subfolders
from starft_cli.data.imagenet import imagenet_classes, scan_wnid_folders
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.images import ImageListing

V2_FOLDER = "imagenetv2-matched-frequency-format-val"


def _download_v2(data_root: Path) -> None:
    from huggingface_hub import hf_hub_download
    from torchvision.datasets.utils import extract_archive

    archive = hf_hub_download("vaishaal/ImageNetV2", "imagenetv2-matched-frequency.tar.gz", repo_type="dataset")
    extract_archive(archive, str(data_root))  # -> imagenetv2-matched-frequency-format-val/<class index>/


@register_dataset(
    "imagenet-v2",
    title="ImageNet-V2 (matched frequency)",
    folder=V2_FOLDER,
    layout=f"{V2_FOLDER}/<class index 0..999>/*.jpeg (the archive as published, folder per class index)",
    source="huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz); "
    "`starft data download imagenet-v2` fetches and extracts it",
    splits=("test",),
    default_split="test",
    templates="imagenet80",
    download=_download_v2,
)
class ImageNetV2(Builder):
    def _scan(self, root: Path, listing: ImageListing | None = None) -> tuple[list[Path], list[int], list[str]]:
        paths: list[Path] = []
        labels: list[int] = []
        problems: list[str] = []
        if not root.is_dir():
            return paths, labels, [f"missing folder {root}"]
        for folder in subfolders(root, listing):
            if not folder.name.isdigit() or not 0 <= int(folder.name) < 1000:
                problems.append(f"{folder} is not a class-index folder (0..999)")
                continue
            files = image_files(folder, listing)
            paths.extend(files)
            labels.extend([int(folder.name)] * len(files))
        if not paths and not problems:
            problems.append(f"no images in class-index folders under {root}")
        return paths, labels, problems

    def build(self, root: Path, split: str) -> FileImageDataset:
        _, names = imagenet_classes()
        listing = ImageListing()
        paths, labels, _ = self._scan(root, listing)
        return self.dataset(
            FileImageDataset, listing, classnames=names, labels=labels, paths=paths, duplicate_classnames_ok=True
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        listing = ImageListing()
        paths, labels, problems = self._scan(root, listing)
        report.problems.extend(problems)
        report.notes.extend(listing.notes())
        if paths:
            count_into(report, "test", labels, imagenet_classes()[1])
        return report


@register_dataset(
    "imagenet-sketch",
    title="ImageNet-Sketch",
    folder="imagenet-sketch",
    layout="imagenet-sketch/sketch/<wnid>/*.JPEG (or imagenet-sketch/<wnid>/*.JPEG)",
    source="github.com/HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip; also huggingface.co/datasets/"
    "imagenet_sketch); extract it so that the wnid folders sit under imagenet-sketch/sketch/",
    splits=("test",),
    default_split="test",
    templates="imagenet80",
)
class ImageNetSketch(Builder):
    @staticmethod
    def _base(root: Path) -> Path:
        return root / "sketch" if (root / "sketch").is_dir() else root

    def build(self, root: Path, split: str) -> FileImageDataset:
        _, names = imagenet_classes()
        listing = ImageListing()
        paths, labels, _ = scan_wnid_folders(self._base(root), listing)
        return self.dataset(
            FileImageDataset, listing, classnames=names, labels=labels, paths=paths, duplicate_classnames_ok=True
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        listing = ImageListing()
        paths, labels, problems = scan_wnid_folders(self._base(root), listing)
        report.problems.extend(problems)
        report.notes.extend(listing.notes())
        if paths:
            count_into(report, "test", labels, imagenet_classes()[1])
        return report


class ImageNetSubset(Builder):
    """ImageNet-R and ImageNet-A: wnid folders covering (up to) 200 ImageNet classes. The published class list
    (the asset ``<name>_wnids.txt``) is used to check the folders; the subset evaluated is the folders present."""

    def published(self) -> set[str]:
        """The wnids of the published class list."""
        return set(asset_lines(f"{self.info.name.replace('-', '_')}_wnids.txt"))

    def build(self, root: Path, split: str) -> FileImageDataset:
        _, names = imagenet_classes()
        listing = ImageListing()
        paths, labels, _ = scan_wnid_folders(root, listing)
        subset = sorted(set(labels))
        return self.dataset(
            FileImageDataset,
            listing,
            classnames=names,
            labels=labels,
            paths=paths,
            class_subset=subset,
            duplicate_classnames_ok=True,  # the full ImageNet list (see imagenet.py); the subset's names are distinct
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        listing = ImageListing()
        paths, labels, problems = scan_wnid_folders(root, listing)
        report.problems.extend(problems)
        report.notes.extend(listing.notes())
        wnids = imagenet_classes()[0]
        allowed = self.published()
        title = self.info.title.partition(" (")[0]
        foreign = sorted({wnids[y] for y in labels} - allowed)
        if foreign:
            report.problems.append(
                f"{root} has wnid folder(s) that are not among {title}'s {len(allowed)} classes: "
                + ", ".join(foreign[:5])
                + (" ..." if len(foreign) > 5 else "")
            )
        if paths:
            report.counts["test images"] = len(paths)
            classes = len(set(labels))
            report.counts["test classes"] = classes
            if classes != len(allowed):
                report.notes.append(
                    f"{classes} wnid folders hold images; the published set has {len(allowed)}. The logits are "
                    f"restricted to the {classes} present, so scores are not comparable to published ones"
                )
        return report


@register_dataset(
    "imagenet-r",
    title="ImageNet-R (renditions, 200 classes)",
    folder="imagenet-r",
    layout="imagenet-r/<wnid>/*.jpg (200 wnid folders, as in imagenet-r.tar)",
    source="github.com/hendrycks/imagenet-r (imagenet-r.tar); extract it under the data root",
    splits=("test",),
    default_split="test",
    templates="imagenet80",
)
class ImageNetR(ImageNetSubset):
    """ImageNet-R: its registration and ``imagenet_r_wnids.txt`` say the rest."""


@register_dataset(
    "imagenet-a",
    title="ImageNet-A (natural adversarial examples, 200 classes)",
    folder="imagenet-a",
    layout="imagenet-a/<wnid>/*.jpg (200 wnid folders, as in imagenet-a.tar)",
    source="github.com/hendrycks/natural-adv-examples (imagenet-a.tar); extract it under the data root",
    splits=("test",),
    default_split="test",
    templates="imagenet80",
)
class ImageNetA(ImageNetSubset):
    """ImageNet-A: its registration and ``imagenet_a_wnids.txt`` say the rest."""
