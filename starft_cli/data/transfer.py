"""Transfer benchmarks: Caltech101 (class folders), Flowers102 and Stanford Cars (MATLAB label files).

Caltech101's index is built by torchvision's Caltech101 reader; its images are opened by our FileImageDataset.
Flowers102 and Stanford Cars keep labels in ``.mat`` files, read here with ``scipy.io.loadmat`` (as torchvision's
readers do), so that a malformed file becomes a ``check`` problem rather than a traceback.

Class names come from the default protocol (:mod:`starft_cli.data.protocols`, the StarFT code's lists), looked up by
the dataset's own class identifiers (Caltech-101's folders, Stanford Cars' cars_meta.mat names) or by label
(Flowers-102's imagelabels.mat order). Caltech-101's train/val/test split is the protocol's seeded rule.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import count_into, require_files, torchvision_download
from starft_cli.data.protocols import ProtocolEntry, attach_protocol, require_protocol
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError

logger = logging.getLogger(__name__)

CALTECH_IMAGES = "101_ObjectCategories"
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_SPLITS = ("train", "val", "test")


def caltech_split_of(category: str, count: int, split_rule: dict) -> list[str]:
    """The split (``train``, ``val`` or ``test``) of each of a category's ``count`` images (image_0001 .. in order).

    The rule of FLYP's ``traintestsplit.py``, which made the StarFT code's caltech-101/{train,val,test} folders: each
    image is drawn into train/val/test independently with probabilities 0.6/0.2/0.2 (``split_rule["fractions"]``).
    There it is unseeded; here the draw is numpy's ``default_rng`` seeded with ``(split_rule["seed"], crc32 of the
    category name)``, so that a category's split depends on nothing but its own image count. Deterministic."""
    import zlib

    fractions = split_rule["fractions"]
    probabilities = [float(fractions[s]) for s in CALTECH_SPLITS]
    rng = np.random.default_rng([int(split_rule["seed"]), zlib.crc32(category.encode())])
    return [CALTECH_SPLITS[k] for k in rng.choice(len(CALTECH_SPLITS), size=count, p=probabilities)]


def caltech_split_line(entry: ProtocolEntry) -> str:
    """One line describing Caltech-101's split rule (for results and ``data check``)."""
    rule = entry.split or {}
    fractions = "/".join(f"{rule['fractions'][s]:g}" for s in CALTECH_SPLITS)
    return (
        f"caltech101: train/val/test = a per-image random draw with probabilities {fractions}, seed {rule['seed']} "
        "(the rule of FLYP's split script, which the StarFT code's folders come from; unseeded there)"
    )


@register_dataset(
    "caltech101",
    title="Caltech-101",
    folder="caltech101",
    layout=f"caltech101/{CALTECH_IMAGES}/<category>/image_0001.jpg ... (101 categories plus {CALTECH_BACKGROUND}, "
    "as extracted from 101_ObjectCategories.tar.gz). Split: each image drawn into train/val/test with probabilities "
    "0.6/0.2/0.2, seeded (the rule of the StarFT/FLYP code's split, which is unseeded there); all = every image",
    source="data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip); `starft data download caltech101` fetches it "
    "via torchvision",
    splits=("test", "train", "val", "all"),
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
        entry = require_protocol("caltech101")
        categories, paths, labels, _ = self._index(root)
        unknown = [c for c in categories if entry.name_for_key(c) is None]
        if unknown:
            raise DataError(f"{root / CALTECH_IMAGES} has folders that are not Caltech-101 categories: {unknown[0]}")
        if split == "all":
            keep = list(range(len(labels)))
        else:
            drawn: list[str] = []
            for c, category in enumerate(categories):
                drawn += caltech_split_of(category, labels.count(c), entry.split or {})
            keep = [k for k, s in enumerate(drawn) if s == split]  # torchvision's index runs category by category
        ds = self.dataset(
            FileImageDataset,
            classnames=[entry.name_for_key(c) for c in categories],
            labels=[labels[k] for k in keep],
            paths=[paths[k] for k in keep],
        )
        ds.split_rule = caltech_split_line(entry) if split != "all" else None
        return attach_protocol(ds, entry, [(entry.keys or ()).index(c) for c in categories])

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        base = root / CALTECH_IMAGES
        if not require_files(report, root, [CALTECH_IMAGES, f"{CALTECH_IMAGES}/{CALTECH_BACKGROUND}"]):
            return report
        known = set(require_protocol("caltech101").keys or ())
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
        report.notes.append(caltech_split_line(require_protocol("caltech101")))
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


def _flowers_names() -> list[str]:
    """The default protocol's 102 names, in imagelabels.mat's label order."""
    entry = require_protocol("flowers102")
    return entry.names_for(len(entry.classnames or ()))


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
        names = _flowers_names()
        ds = self.dataset(FileImageDataset, classnames=names, labels=labels, paths=paths)
        return attach_protocol(ds, require_protocol("flowers102"), list(range(len(names))))

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        if not require_files(report, root, ["jpg", "imagelabels.mat", "setid.mat"]):
            return report
        names = _flowers_names()
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
        entry = require_protocol("stanford-cars")
        keys = list(entry.keys or ())
        # the protocol's name of each cars_meta.mat class; a name the standard list lacks is kept as it is
        names = [entry.name_for_key(c) or c for c in classes]
        ds = self.dataset(FileImageDataset, classnames=names, labels=labels, paths=paths)
        if all(c in keys for c in classes):
            attach_protocol(ds, entry, [keys.index(c) for c in classes])
        return ds

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
