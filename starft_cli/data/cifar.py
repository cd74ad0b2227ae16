"""CIFAR-10, CIFAR-100 (python pickles), CIFAR-10.2 (npz), CIFAR-10.02 (the two mixed), STL10 (binaries).

CIFAR's official "python version" files are pickles. When they are the official files (torchvision checks
their md5 sums) torchvision's own reader reads them. Any other copy (a re-packed or modified one) is read
with a restricted unpickler that can only rebuild plain containers and numpy arrays, so a crafted file
cannot run code. STL10's binaries are raw arrays, read by torchvision's STL10 reader (its md5 check of every
file, the 2.6 GB unlabeled one included, is replaced by a size check of the files the split needs).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from starft_cli.data.base import ArrayImageDataset, CheckReport
from starft_cli.data.checks import count_groups, count_into, torchvision_download
from starft_cli.data.protocols import attach_protocol, require_protocol
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError

logger = logging.getLogger(__name__)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR102_FOLDER = "cifar-10.2"
STL10_FOLDER = "stl10_binary"


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and builtin containers: anything else is refused."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
            ("copyreg", "_reconstructor"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python-version file, through the restricted unpickler."""
    try:
        with path.open("rb") as handle:
            data = _RestrictedUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc})", "Re-extract the official cifar python archive") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a CIFAR batch file")
    return data


class _Cifar(Builder):
    """Shared reader of the two CIFAR python-version layouts."""

    tv_class = ""
    label_key = ""  # "labels" (CIFAR-10) or "fine_labels" (CIFAR-100)
    names_key = ""  # "label_names" or "fine_label_names"
    meta_file = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    num_classes = 0

    def files(self, split: str) -> tuple[str, ...]:
        return self.train_files if split == "train" else self.test_files

    def _official(self, root: Path) -> bool:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import check_integrity

        cls = getattr(tvd, self.tv_class)
        entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        return all(check_integrity(str(root / name), md5) for name, md5 in entries)

    def read(self, root: Path, split: str) -> tuple[np.ndarray, list[int], list[str]]:
        """Images ``[N, 32, 32, 3]`` uint8, labels and class names."""
        if self._official(root):
            import torchvision.datasets as tvd

            tv = getattr(tvd, self.tv_class)(str(root.parent), train=split == "train", download=False)
            # torchvision's root is the parent of the batches folder, which must carry its official name
            return np.asarray(tv.data), [int(t) for t in tv.targets], [c.replace("_", " ") for c in tv.classes]
        logger.info("%s: not the official files (md5 differ); reading them with the restricted unpickler", root)
        arrays, labels = [], []
        for name in self.files(split):
            entry = read_cifar_pickle(root / name)
            arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in entry[self.label_key])
        meta = read_cifar_pickle(root / self.meta_file)
        names = [str(c).replace("_", " ") for c in meta[self.names_key]]
        images = np.concatenate(arrays).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), labels, names

    def build(self, root: Path, split: str) -> ArrayImageDataset:
        images, labels, names = self.read(root, split)
        ds = self.dataset(
            ArrayImageDataset,
            classnames=protocol_names(self.info.name, names),
            labels=labels,
            images=images,
            sources=[root / f for f in self.files(split)],
        )
        return attach_protocol(ds, require_protocol(self.info.name), list(range(len(names))))

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        if not root.is_dir():
            report.problems.append(f"missing folder {root}")
            return report
        missing = [n for n in (*self.train_files, *self.test_files, self.meta_file) if not (root / n).is_file()]
        if missing:
            report.problems.append(f"missing {', '.join(str(root / n) for n in missing)}")
        elif self._official(root):
            report.notes.append("official files (md5 sums match)")
        for split in self.info.splits:
            if any(n in missing for n in (*self.files(split), self.meta_file)):
                continue  # reported above; the other split is still checked
            try:
                images, labels, names = self.read(root, split)
            except DataError as exc:
                report.problems.append(exc.message)  # a meta-file problem shows once (check_dataset dedupes)
                continue
            if len(names) != self.num_classes:
                report.problems.append(
                    f"{root / self.meta_file} names {len(names)} classes, expected {self.num_classes}"
                )
                continue
            if len(images) != len(labels) or (labels and not 0 <= min(labels) <= max(labels) < len(names)):
                report.problems.append(f"{split} files: labels do not match the images or the class list")
                continue
            count_into(report, split, labels, names)
        return report


@register_dataset(
    "cifar10",
    title="CIFAR-10",
    folder=CIFAR10_FOLDER,
    layout=f"{CIFAR10_FOLDER}/data_batch_1..5, test_batch, batches.meta (the official python version)",
    source="cs.toronto.edu/~kriz/cifar-10-python.tar.gz; `starft data download cifar10` fetches it via torchvision",
    splits=("train", "test"),
    default_split="test",
    templates="cifar",
    download=torchvision_download("CIFAR10", train=False),
)
class Cifar10(_Cifar):
    tv_class = "CIFAR10"
    label_key = "labels"
    names_key = "label_names"
    meta_file = "batches.meta"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    num_classes = 10


@register_dataset(
    "cifar100",
    title="CIFAR-100",
    folder=CIFAR100_FOLDER,
    layout=f"{CIFAR100_FOLDER}/train, test, meta (the official python version)",
    source="cs.toronto.edu/~kriz/cifar-100-python.tar.gz; `starft data download cifar100` fetches it via torchvision",
    splits=("train", "test"),
    default_split="test",
    templates="cifar",
    download=torchvision_download("CIFAR100", train=False),
)
class Cifar100(_Cifar):
    tv_class = "CIFAR100"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    meta_file = "meta"
    train_files = ("train",)
    test_files = ("test",)
    num_classes = 100


def protocol_names(dataset: str, own: list[str]) -> list[str]:
    """The default protocol's spelling of a dataset's own class list ``own`` (read from its meta file): the
    protocol's names when they are the same classes in the same order (compared with ``_`` read as a space; CIFAR-100's
    protocol keeps torchvision's 'aquarium_fish', as CLIP_benchmark does), else ``own`` itself (a re-packed copy with
    other names; logged)."""
    names = require_protocol(dataset).names_for(len(own)) if len(own) else []
    if [n.replace("_", " ") for n in names] == [n.replace("_", " ") for n in own]:
        return names
    logger.info("%s: the meta file's class names are not the standard ones; using them as they are", dataset)
    return list(own)


def cifar10_classnames() -> list[str]:
    """CIFAR-10's class names under the default protocol (CIFAR-10.2 and CIFAR-10.02 share them)."""
    entry = require_protocol("cifar10")
    return entry.names_for(len(entry.classnames or ()))


def read_cifar102(root: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """CIFAR-10.2's ``cifar102_<split>.npz`` (``images`` [N,32,32,3] uint8, ``labels``), without pickles."""
    path = root / f"cifar102_{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            images = np.asarray(data["images"], dtype=np.uint8)
            labels = [int(v) for v in data["labels"]]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc})", "It must be an npz with arrays 'images' and 'labels'") from exc
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise DataError(f"{path}: expected images [N, 32, 32, 3] and N labels, found {images.shape}")
    return images, labels


def _check_cifar102(report: CheckReport, root: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        if not (root / f"cifar102_{split}.npz").is_file():
            report.problems.append(f"missing {root / f'cifar102_{split}.npz'}")
            continue
        try:
            _, labels = read_cifar102(root, split)
        except DataError as exc:
            report.problems.append(exc.message)
            continue
        if labels and not 0 <= min(labels) <= max(labels) < 10:
            report.problems.append(f"{root / f'cifar102_{split}.npz'}: labels outside 0..9")
            continue
        count_into(report, f"cifar-10.2 {split}", labels, cifar10_classnames())


@register_dataset(
    "cifar10.2",
    title="CIFAR-10.2",
    folder=CIFAR102_FOLDER,
    layout=f"{CIFAR102_FOLDER}/cifar102_train.npz and cifar102_test.npz (arrays 'images' [N,32,32,3], 'labels')",
    source="github.com/modestyachts/cifar-10.2 (the two .npz files in the repository); put them in cifar-10.2/",
    splits=("train", "test"),
    default_split="test",
    templates="cifar",
)
class Cifar102(Builder):
    def build(self, root: Path, split: str) -> ArrayImageDataset:
        images, labels = read_cifar102(root, split)
        return self.dataset(
            ArrayImageDataset,
            classnames=cifar10_classnames(),
            labels=labels,
            images=images,
            sources=[root / f"cifar102_{split}.npz"],
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        _check_cifar102(report, root, self.info.splits)
        return report


@register_dataset(
    "cifar10.02",
    title="CIFAR-10.02 (CIFAR-10 test mixed with CIFAR-10.2 test; groups = class x source)",
    folder=CIFAR102_FOLDER,
    layout=f"both {CIFAR10_FOLDER}/ (CIFAR-10 python version) and {CIFAR102_FOLDER}/ (CIFAR-10.2 npz files) "
    "under the same data root",
    source="CIFAR-10: `starft data download cifar10`; CIFAR-10.2: github.com/modestyachts/cifar-10.2",
    splits=("test",),
    default_split="test",
    templates="cifar",
)
class Cifar1002(Builder):
    sources = (Cifar10.info.name, Cifar102.info.name)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(f"{c} ({s})" for s in self.sources for c in cifar10_classnames())

    def build(self, root: Path, split: str) -> ArrayImageDataset:
        a_images, a_labels, _ = Cifar10().read(root.parent / CIFAR10_FOLDER, "test")
        b_images, b_labels = read_cifar102(root, "test")
        labels = a_labels + b_labels
        groups = a_labels + [10 + y for y in b_labels]
        return self.dataset(
            ArrayImageDataset,
            classnames=cifar10_classnames(),
            labels=labels,
            images=np.concatenate([a_images, b_images]),
            sources=[root.parent / CIFAR10_FOLDER / "test_batch", root / "cifar102_test.npz"],
            groups=groups,
            group_names=self.group_names,
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        inner = Cifar10().check(root.parent / CIFAR10_FOLDER)
        report.problems.extend(inner.problems)
        report.counts.update({f"cifar-10 {k}": v for k, v in inner.counts.items() if k.startswith("test")})
        _check_cifar102(report, root, Cifar102.info.splits)
        if report.ok:
            ds = self.build(root, "test")
            count_groups(report, "test", ds.groups or [], self.group_names)
        return report


def _stl10_names() -> list[str]:
    """STL-10's standard class names (the default protocol's), for a copy without class_names.txt."""
    entry = require_protocol("stl10")
    return entry.names_for(len(entry.classnames or ()))


STL10_SPLIT_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}
STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_reader() -> type:
    from torchvision.datasets import STL10

    class _STL10(STL10):
        def _check_integrity(self) -> bool:
            files = STL10_SPLIT_FILES["test" if self.split == "test" else "train"]
            return all((Path(self.root) / self.base_folder / f).is_file() for f in files)

    return _STL10


@register_dataset(
    "stl10",
    title="STL-10",
    folder=STL10_FOLDER,
    layout=f"{STL10_FOLDER}/train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt (the binary version)",
    source="cs.stanford.edu/~acoates/stl10 (stl10_binary.tar.gz); `starft data download stl10` fetches it via "
    "torchvision",
    splits=("train", "test"),
    default_split="test",
    templates="stl10",
    download=torchvision_download("STL10", split="test"),
)
class STL10(Builder):
    def build(self, root: Path, split: str) -> ArrayImageDataset:
        tv = _stl10_reader()(str(root.parent), split=split, download=False)
        names = list(getattr(tv, "classes", None) or _stl10_names())
        images = np.ascontiguousarray(np.asarray(tv.data).transpose(0, 2, 3, 1))
        ds = self.dataset(
            ArrayImageDataset,
            classnames=protocol_names(self.info.name, names),
            labels=[int(v) for v in tv.labels],
            images=images,
            sources=[root / f for f in STL10_SPLIT_FILES[split]],
        )
        return attach_protocol(ds, require_protocol(self.info.name), list(range(len(names))))

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        if not root.is_dir():
            report.problems.append(f"missing folder {root}")
            return report
        for split in self.info.splits:
            x_name, y_name = STL10_SPLIT_FILES[split]
            x_path, y_path = root / x_name, root / y_name
            if not x_path.is_file() or not y_path.is_file():
                report.problems.append(f"missing {x_path if not x_path.is_file() else y_path}")
                continue
            size, count = x_path.stat().st_size, y_path.stat().st_size
            if size % STL10_IMAGE_BYTES or size // STL10_IMAGE_BYTES != count:
                report.problems.append(
                    f"{x_path} holds {size / STL10_IMAGE_BYTES:g} images of 96x96x3 bytes but {y_path} {count} labels"
                )
                continue
            labels = [int(v) - 1 for v in np.fromfile(y_path, dtype=np.uint8)]
            if labels and not 0 <= min(labels) <= max(labels) < 10:
                report.problems.append(f"{y_path}: labels outside 1..10")
                continue
            count_into(report, split, labels, _stl10_names())
        if not (root / "class_names.txt").is_file():
            report.notes.append(f"no {root / 'class_names.txt'}; the standard STL-10 class names are used")
        return report
