"""Transfer benchmarks: Caltech101 (class folders), Flowers102 and Stanford Cars (MATLAB label files).

Caltech101's index is built by torchvision's Caltech101 reader; its images are opened by our FileImageDataset.
Flowers102 and Stanford Cars keep labels in ``.mat`` files, read here with ``scipy.io.loadmat`` (as torchvision's
readers do), so that a malformed file becomes a ``check`` problem rather than a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import asset_lines, asset_table, count_into, require_files, torchvision_download
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError

logger = logging.getLogger(__name__)

CALTECH_IMAGES = "101_ObjectCategories"
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_TRAIN_PER_CLASS = 30


@register_dataset(
    "caltech101",
    title="Caltech-101",
    folder="caltech101",
    layout=f"caltech101/{CALTECH_IMAGES}/<category>/image_0001.jpg ... (101 categories plus {CALTECH_BACKGROUND}, "
    "as extracted from 101_ObjectCategories.tar.gz). Split: train = the first 30 images of each category, "
    "test = the rest, all = every image",
    source="data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip); `starft data download caltech101` fetches it "
    "via torchvision",
    splits=("test", "train", "all"),
    default_split="test",
    templates="caltech101",
    download=torchvision_download("Caltech101"),
)
class Caltech101(Builder):
    def _index(self, root: Path) -> tuple[list[str], list[Path], list[int], list[int]]:
        from torchvision.datasets import Caltech101 as TVCaltech101

        tv = TVCaltech101(str(root.parent), target_type="category", download=False)
        base = root / CALTECH_IMAGES
        paths = [base / tv.categories[y] / f"image_{i:04d}.jpg" for i, y in zip(tv.index, tv.y, strict=True)]
        return list(tv.categories), paths, [int(y) for y in tv.y], [int(i) for i in tv.index]

    def build(self, root: Path, split: str) -> FileImageDataset:
        categories, paths, labels, numbers = self._index(root)
        names = asset_table("caltech101_classes.tsv")
        keep = [
            k for k, n in enumerate(numbers) if split == "all" or (n <= CALTECH_TRAIN_PER_CLASS) == (split == "train")
        ]
        return self.dataset(
            FileImageDataset,
            classnames=[names.get(c, c.replace("_", " ")) for c in categories],
            labels=[labels[k] for k in keep],
            paths=[paths[k] for k in keep],
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        base = root / CALTECH_IMAGES
        if not require_files(report, root, [CALTECH_IMAGES, f"{CALTECH_IMAGES}/{CALTECH_BACKGROUND}"]):
            return report
        known = asset_table("caltech101_classes.tsv")
        unknown = sorted(
            p.name for p in base.iterdir() if p.is_dir() and p.name not in known and p.name != CALTECH_BACKGROUND
        )
        if unknown:
            report.problems.append(f"{base} has folders that are not Caltech-101 categories: {', '.join(unknown[:5])}")
        categories, paths, labels, _ = self._index(root)
        absent = [p for p in paths if not p.is_file()]
        if absent:
            report.problems.append(
                f"{len(absent)} expected files are missing (e.g. {absent[0]}); each category folder must hold "
                "image_0001.jpg .. image_NNNN.jpg and nothing else"
            )
        count_into(report, "all", labels, categories)
        if len(categories) != len(known):
            report.notes.append(f"{len(categories)} of the {len(known)} categories are present")
        return report


FLOWERS_FOLDER = "flowers-102"
FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _load_mat(path: Path, name: str) -> np.ndarray:
    """One variable of a MATLAB file, flattened to a 1-D array (a struct array keeps its named fields)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        data = loadmat(path, squeeze_me=True)
    except (MatReadError, OSError, ValueError, NotImplementedError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "Re-extract the dataset's .mat files") from exc
    if name not in data:
        raise DataError(f"{path} has no variable '{name}'", "Re-extract the dataset's .mat files")
    return np.atleast_1d(data[name]).reshape(-1)


def _flowers_index(root: Path, split: str) -> tuple[list[Path], list[int]]:
    key = FLOWERS_SPLITS[split]
    ids = [int(i) for i in _load_mat(root / "setid.mat", key)]
    labels_all = [int(v) for v in _load_mat(root / "imagelabels.mat", "labels")]
    if ids and not 1 <= min(ids) <= max(ids) <= len(labels_all):
        raise DataError(f"{root / 'setid.mat'}: image ids outside 1..{len(labels_all)}")
    return [root / "jpg" / f"image_{i:05d}.jpg" for i in ids], [labels_all[i - 1] - 1 for i in ids]


@register_dataset(
    "flowers102",
    title="Oxford Flowers-102",
    folder=FLOWERS_FOLDER,
    layout=f"{FLOWERS_FOLDER}/jpg/image_00001.jpg ..., {FLOWERS_FOLDER}/imagelabels.mat, {FLOWERS_FOLDER}/setid.mat",
    source="robots.ox.ac.uk/~vgg/data/flowers/102 (102flowers.tgz, imagelabels.mat, setid.mat); "
    "`starft data download flowers102` fetches them via torchvision",
    splits=("train", "val", "test"),
    default_split="test",
    templates="flowers102",
    download=torchvision_download("Flowers102", split="test"),
)
class Flowers102(Builder):
    def build(self, root: Path, split: str) -> FileImageDataset:
        paths, labels = _flowers_index(root, split)
        return self.dataset(
            FileImageDataset, classnames=list(asset_lines("flowers102_classes.txt")), labels=labels, paths=paths
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        if not require_files(report, root, ["jpg", "imagelabels.mat", "setid.mat"]):
            return report
        names = list(asset_lines("flowers102_classes.txt"))
        for split in self.info.splits:
            try:
                paths, labels = _flowers_index(root, split)
            except DataError as exc:
                report.problems.append(exc.message)  # the same .mat problem for every split is shown once
                continue
            if labels and not 0 <= min(labels) <= max(labels) < len(names):
                report.problems.append(f"{root / 'imagelabels.mat'}: labels outside 1..{len(names)}")
                continue
            absent = [p for p in paths if not p.is_file()]
            if absent:
                report.problems.append(
                    f"{split}: {len(absent)} images listed in setid.mat are missing (e.g. {absent[0]})"
                )
                continue
            count_into(report, split, labels, names)
        return report


CARS_FOLDER = "stanford_cars"
CARS_FILES = {
    "train": ("devkit/cars_train_annos.mat", "cars_train"),
    "test": ("cars_test_annos_withlabels.mat", "cars_test"),
}


def _cars_index(root: Path, split: str) -> tuple[list[str], list[Path], list[int]]:
    annos_file, images = CARS_FILES[split]
    classes = _load_mat(root / "devkit" / "cars_meta.mat", "class_names")
    annotations = _load_mat(root / annos_file, "annotations")
    try:
        paths = [root / images / str(f) for f in annotations["fname"]]
        labels = [int(c) - 1 for c in annotations["class"]]
    except (IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{root / annos_file}: annotations need 'fname' and 'class' ({exc})") from exc
    return [str(c) for c in classes], paths, labels


@register_dataset(
    "stanford-cars",
    title="Stanford Cars",
    folder=CARS_FOLDER,
    layout=f"{CARS_FOLDER}/devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, cars_test/*.jpg, "
    "cars_test_annos_withlabels.mat (torchvision's StanfordCars layout)",
    source="the original URL is gone; copies of car_devkit.tgz, cars_train.tgz, cars_test.tgz and "
    "cars_test_annos_withlabels.mat circulate (e.g. on Kaggle). Extract them into stanford_cars/",
    splits=("train", "test"),
    default_split="test",
    templates="cars",
)
class StanfordCars(Builder):
    def build(self, root: Path, split: str) -> FileImageDataset:
        classes, paths, labels = _cars_index(root, split)
        return self.dataset(FileImageDataset, classnames=classes, labels=labels, paths=paths)

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        needed = ["devkit/cars_meta.mat"] + [x for split in self.info.splits for x in CARS_FILES[split]]
        if not require_files(report, root, needed):
            return report
        for split in self.info.splits:
            try:
                classes, paths, labels = _cars_index(root, split)
            except DataError as exc:
                report.problems.append(exc.message)
                continue
            if labels and not 0 <= min(labels) <= max(labels) < len(classes):
                report.problems.append(f"{split}: class numbers outside 1..{len(classes)}")
                continue
            absent = [p for p in paths if not p.is_file()]
            if absent:
                report.problems.append(f"{split}: {len(absent)} annotated images are missing (e.g. {absent[0]})")
                continue
            count_into(report, split, labels, classes)
        return report
