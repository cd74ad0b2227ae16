"""Generators of each benchmark's real on-disk layout, with a few tiny images (for the data and eval tests)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from tests.imagegen import PALETTE, make_image

SIZE = (32, 32)
WNIDS = ("n01440764", "n01443537", "n01484850")  # ImageNet classes 0, 1, 2


def _img(path: Path, seed: int, label: int) -> Path:
    return make_image(path, seed=seed, size=SIZE, color=PALETTE[label % len(PALETTE)])


def _pixels(n: int, labels: list[int], seed: int = 0, size: int = 32) -> np.ndarray:
    rng = np.random.RandomState(seed)
    base = np.array([PALETTE[y % len(PALETTE)] for y in labels], dtype=np.float32)[:, None, None, :]
    return np.clip(base + rng.normal(0, 20, size=(n, size, size, 3)), 0, 255).astype(np.uint8)


def make_wnid_folders(root: Path, wnids: tuple[str, ...] = WNIDS, per_class: int = 2, suffix: str = ".JPEG") -> Path:
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            _img(root / wnid / f"{wnid}_{i}{suffix}", 100 * c + i, c)
    return root


def make_imagenet(data_root: Path, per_class: int = 2) -> Path:
    make_wnid_folders(data_root / "imagenet" / "train", per_class=per_class)
    make_wnid_folders(data_root / "imagenet" / "val", per_class=per_class)
    return data_root / "imagenet"


def make_imagenet_v2(data_root: Path, per_class: int = 2) -> Path:
    root = data_root / "imagenetv2-matched-frequency-format-val"
    for c in range(len(WNIDS)):
        for i in range(per_class):
            _img(root / str(c) / f"{i}.jpeg", 200 + 10 * c + i, c)
    return root


def make_imagenet_sketch(data_root: Path) -> Path:
    return make_wnid_folders(data_root / "imagenet-sketch" / "sketch").parent


def subset_wnids(name: str) -> tuple[str, ...]:
    """The first two of the published classes of ImageNet-R / ImageNet-A."""
    from starft_cli.data.checks import asset_lines

    return asset_lines(f"{name.replace('-', '_')}_wnids.txt")[:2]


def make_imagenet_r(data_root: Path, name: str = "imagenet-r") -> Path:
    # two of the 200 classes: the subset must come from the folders present
    return make_wnid_folders(data_root / name, wnids=subset_wnids(name), suffix=".jpg")


def make_waterbirds(data_root: Path, per_group: int = 2) -> Path:
    root = data_root / "waterbird_complete95_forest2water2"
    rows = []
    n = 0
    for split in (0, 1, 2):
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(per_group):
                    rel = f"{y:03d}.Bird_{y}/bird_{n}.jpg"
                    _img(root / rel, 300 + n, 2 * y + place)
                    rows.append(
                        {
                            "img_id": n + 1,
                            "img_filename": rel,
                            "y": y,
                            "split": split,
                            "place": place,
                            "place_filename": f"/x/{n}.jpg",
                        }
                    )
                    n += 1
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_pacs(data_root: Path, per_class: int = 1) -> Path:
    from starft_cli.data.groups import PACS_CLASSES, PACS_DOMAINS

    root = data_root / "PACS"
    for d, domain in enumerate(PACS_DOMAINS):
        for c, name in enumerate(PACS_CLASSES):
            for i in range(per_class):
                _img(root / domain / name / f"{i}.jpg", 400 + 50 * d + 5 * c + i, c)
    return root


def _pickle(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def make_cifar10(data_root: Path, per_file: int = 10) -> Path:
    root = data_root / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(files):
        labels = [(k + j) % 10 for j in range(per_file)]
        data = _pixels(per_file, labels, seed=k).transpose(0, 3, 1, 2).reshape(per_file, -1)
        _pickle(
            root / name,
            {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{j}.png" for j in range(per_file)]},
        )
    _pickle(root / "batches.meta", {"label_names": names, "num_cases_per_batch": per_file, "num_vis": 3072})
    return root


def make_cifar100(data_root: Path, per_file: int = 12) -> Path:
    root = data_root / "cifar-100-python"
    names = [f"class_{i:02d}" for i in range(100)]
    for k, name in enumerate(("train", "test")):
        labels = [(7 * j + k) % 100 for j in range(per_file)]
        data = _pixels(per_file, labels, seed=10 + k).transpose(0, 3, 1, 2).reshape(per_file, -1)
        _pickle(root / name, {"fine_labels": labels, "coarse_labels": [y // 5 for y in labels], "data": data})
    _pickle(root / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    return root


def make_cifar102(data_root: Path, per_split: int = 10) -> Path:
    root = data_root / "cifar-10.2"
    root.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(("train", "test")):
        labels = np.array([(j + 3) % 10 for j in range(per_split)], dtype=np.int64)
        np.savez(root / f"cifar102_{split}.npz", images=_pixels(per_split, list(labels), seed=20 + k), labels=labels)
    return root


def make_stl10(data_root: Path, per_split: int = 10) -> Path:
    root = data_root / "stl10_binary"
    root.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(("train", "test")):
        labels = [j % 10 for j in range(per_split)]
        images = _pixels(per_split, labels, seed=30 + k, size=96)  # [N, H, W, 3]
        # the binary format: per image, channel-major, each channel column-major
        images.transpose(0, 3, 2, 1).astype(np.uint8).tofile(root / f"{split}_X.bin")
        (np.array(labels, dtype=np.uint8) + 1).tofile(root / f"{split}_y.bin")
    (root / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n"
    )
    return root


def make_caltech101(
    data_root: Path, categories: tuple[str, ...] = ("accordion", "airplanes"), per_class: int = 32
) -> Path:
    root = data_root / "caltech101"
    base = root / "101_ObjectCategories"
    for c, name in enumerate(("BACKGROUND_Google", *categories)):
        for i in range(1, per_class + 1):
            _img(base / name / f"image_{i:04d}.jpg", 600 + 40 * c + i, c)
    return root


def write_mat(path: Path, variables: dict[str, Any], compress: bool = False) -> Path:
    """A MATLAB 5 file: numpy arrays as matrices, object arrays of str as cell arrays, structured arrays as structs."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, variables, do_compression=compress)
    return path


def cars_annotations(fnames: list[str], classes: list[int]) -> np.ndarray:
    """A 1xN struct array like the Stanford Cars annotation files (bounding box, 1-based class, file name)."""
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    rows = [(1.0, 1.0, 30.0, 30.0, float(c), f) for f, c in zip(fnames, classes, strict=True)]
    return np.array(rows, dtype=[(f, object) for f in fields]).reshape(1, -1)


def make_flowers102(data_root: Path, classes: int = 3, per_split: int = 2) -> Path:
    root = data_root / "flowers-102"
    labels = []
    setid: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    image_id = 1
    for key in setid:
        for c in range(classes):
            for _ in range(per_split):
                _img(root / "jpg" / f"image_{image_id:05d}.jpg", 700 + image_id, c)
                labels.append(c + 1)
                setid[key].append(image_id)
                image_id += 1
    write_mat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=float)}, compress=True)
    write_mat(root / "setid.mat", {k: np.array([v], dtype=float) for k, v in setid.items()})
    return root


def make_stanford_cars(data_root: Path, per_class: int = 2) -> Path:
    root = data_root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TT RS Coupe 2012"]
    write_mat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    for k, (split, annos) in enumerate(
        (("train", root / "devkit" / "cars_train_annos.mat"), ("test", root / "cars_test_annos_withlabels.mat"))
    ):
        fnames, labels = [], []
        for c in range(len(classes)):
            for i in range(per_class):
                fnames.append(f"{c * per_class + i + 1:05d}.jpg")
                labels.append(c + 1)
                _img(root / f"cars_{split}" / fnames[-1], 800 + 50 * k + 10 * c + i, c)
        write_mat(annos, {"annotations": cars_annotations(fnames, labels)}, compress=k == 1)
    return root


def make_iwildcam(data_root: Path, per_class: int = 2) -> Path:
    root = data_root / "iwildcam_v2.0"
    rows = []
    n = 0
    for split in ("train", "val", "test", "id_val", "id_test"):
        for y in range(3):
            for _ in range(per_class):
                name = f"{n:08x}.jpg"
                _img(root / "train" / name, 900 + n, y)
                rows.append({"split": split, "location_remapped": n % 4, "y": y, "filename": name})
                n += 1
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "categories.csv").write_text("y,category_id,name\n0,0,empty\n1,3,tayassu pecari\n2,8,dasyprocta punctata\n")
    return root


def make_fmow(data_root: Path) -> Path:
    root = data_root / "fmow_v1.1"
    countries = [("USA", "Americas"), ("FRA", "Europe"), ("KEN", "Africa")]
    rows = []
    # (original split, year): 2014 train and 2017 val rows belong to no split; ATA is not mapped: region Other
    plan = [("train", "2010"), ("val", "2011"), ("test", "2012"), ("train", "2014"), ("val", "2014")]
    plan += [("val", "2017"), ("test", "2017"), ("seq", "2017")]
    for split, year in plan:
        for cc in [c for c, _ in countries] + (["ATA"] if (split, year) == ("test", "2017") else []):
            for category in ("airport", "zoo"):
                rows.append(
                    {
                        "split": split,
                        "img_filename": "x.jpg",
                        "category": category,
                        "country_code": cc,
                        "timestamp": f"{year}-05-01T00:00:00Z",
                    }
                )
    for index, row in enumerate(rows):
        _img(root / "images" / f"rgb_img_{index}.png", 1000 + index, 0 if row["category"] == "airport" else 1)
    with (root / "rgb_metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "country_code_mapping.csv").write_text("alpha-3,region\n" + "".join(f"{c},{r}\n" for c, r in countries))
    return root


# name -> generator(data_root); each returns the dataset's folder
LAYOUTS = {
    "imagenet": make_imagenet,
    "imagenet-v2": make_imagenet_v2,
    "imagenet-sketch": make_imagenet_sketch,
    "imagenet-r": make_imagenet_r,
    "imagenet-a": lambda root: make_imagenet_r(root, "imagenet-a"),
    "waterbirds": make_waterbirds,
    "pacs": make_pacs,
    "cifar10": make_cifar10,
    "cifar100": make_cifar100,
    "cifar10.2": make_cifar102,
    "cifar10.02": lambda root: (make_cifar10(root), make_cifar102(root))[1],
    "stl10": make_stl10,
    "caltech101": make_caltech101,
    "flowers102": make_flowers102,
    "stanford-cars": make_stanford_cars,
    "iwildcam": make_iwildcam,
    "fmow": make_fmow,
    # the embedded benchmark: its real layout is what its generator writes
    "spurious-digits": lambda root: __import__("starft_cli.data.digits", fromlist=["write"]).write(
        root / "spurious-digits"
    ),
}
