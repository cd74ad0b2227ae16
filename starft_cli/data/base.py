"""The dataset types every reader returns."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.utils.data

from starft_cli.errors import DataError
from starft_cli.images import open_image


def name_key(name: str) -> str:
    """What a class name reads as: case folded, underscores read as spaces, whitespace collapsed. Two names with
    the same key name one class to a reader (``sea_lion`` and ``Sea lion``); :func:`starft_cli.zeroshot.check_prompts`
    checks the tokenized prompts exactly."""
    return " ".join(name.replace("_", " ").casefold().split())


def classname_collisions(names: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(first, other)`` of class indices whose names have the same :func:`name_key` (identical names
    included)."""
    first: dict[str, int] = {}
    pairs = []
    for index, name in enumerate(names):
        other = first.setdefault(name_key(name), index)
        if other != index:
            pairs.append((other, index))
    return pairs


class ImageDataset(torch.utils.data.Dataset):
    """Labelled images with class names and, where the benchmark has them, groups and captions.

    ``dataset[i]`` is ``(transform(image), label)``. ``groups[i]`` indexes ``group_names``; ``group_kind`` says
    what the groups are: ``"group"``, or ``"region"`` for geographic regions (FMoW; what worst_region_acc needs);
    ``captions[i]`` (training data) overrides the ``a photo of a {classname}.`` caption. ``templates`` names the
    default zero-shot templates; ``split`` is the split it holds (set by :func:`starft_cli.data.registry.resolve`).

    Class names must be distinct once case, spacing and underscores are ignored (:class:`~starft_cli.errors.DataError`
    otherwise); ``duplicate_classnames_ok`` is for a benchmark's standard list that has duplicates (ImageNet's).
    """

    def __init__(
        self,
        *,
        name: str,
        classnames: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Any], Any] | None = None,
        groups: Sequence[int] | None = None,
        group_names: Sequence[str] | None = None,
        group_kind: str = "group",
        captions: Sequence[str] | None = None,
        templates: str = "imagenet80",
        class_subset: Sequence[int] | None = None,
        duplicate_classnames_ok: bool = False,
    ) -> None:
        self.name = name
        self.classnames = list(classnames)
        collisions = classname_collisions(self.classnames)
        if collisions and not duplicate_classnames_ok:
            a, b = collisions[0]
            raise DataError(
                f"{name}: classes {a} and {b} are named '{self.classnames[a]}' and '{self.classnames[b]}', which read "
                "as one class name (case, spacing and underscores aside): the model could never tell them apart",
                "Give every class a distinct name",
            )
        self.labels = [int(y) for y in labels]
        self.transform = transform
        self.groups = None if groups is None else [int(g) for g in groups]
        self.group_names = None if group_names is None else list(group_names)
        self.group_kind = group_kind
        self.captions = None if captions is None else list(captions)
        self.templates = templates
        self.split: str | None = None
        # What listing the files left out, one line per kind (macOS '._*' companions, repeated symlinked folders;
        # see starft_cli.images.ImageListing): logged by resolve, shown by `starft data check`.
        self.left_out: list[str] = []
        # For datasets that cover a subset of a larger label space (ImageNet-R/A): the indices, in the
        # larger space, of this dataset's classes; labels are then indices into the larger space.
        self.class_subset = None if class_subset is None else [int(c) for c in class_subset]

    def __len__(self) -> int:
        return len(self.labels)

    def get_image(self, index: int) -> Any:
        """The ``index``-th image as an RGB PIL image."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """A human-readable name of the ``index``-th sample (its file path where it has one)."""
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        """A content key of the samples (which images, in which order, with which labels): it changes when the
        data change. Subclasses hash what identifies their images; this base hashes name and labels only."""
        digest = hashlib.sha256(f"{type(self).__name__}|{self.name}|".encode())
        digest.update(_ints_bytes(self.labels))
        return digest.hexdigest()[:32]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.get_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def with_transform(self, transform: Callable[[Any], Any] | None) -> ImageDataset:
        """A shallow copy with another transform."""
        other = copy.copy(self)
        other.transform = transform
        return other


class FileImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images are files."""

    def __init__(self, *, paths: Sequence[str | Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")

    def get_image(self, index: int) -> Any:
        return open_image(self.paths[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def fingerprint(self) -> str:
        """Hash of every file's path, size, mtime, inode and ctime, and the labels (no file is read)."""
        digest = hashlib.sha256(f"files|{len(self.paths)}|".encode())
        _hash_file_stats(digest, self.paths)
        digest.update(_ints_bytes(self.labels))
        return digest.hexdigest()[:32]


class ArrayImageDataset(ImageDataset):
    """An :class:`ImageDataset` over a ``uint8`` array ``[N, H, W, 3]`` (CIFAR, STL10 binaries).

    ``sources`` are the files the array was read from; their paths, sizes and times key the fingerprint.
    """

    def __init__(self, *, images: Any, sources: Sequence[str | Path] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images
        self.sources = [Path(p) for p in sources]
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def get_image(self, index: int) -> Any:
        from PIL import Image

        return Image.fromarray(self.images[index]).convert("RGB")

    def fingerprint(self) -> str:
        import numpy as np

        digest = hashlib.sha256(f"array|{self.name}|{tuple(self.images.shape)}|".encode())
        _hash_file_stats(digest, self.sources)
        # a strided sample of the pixels as well, so that arrays built in memory are keyed by content too
        flat = np.ascontiguousarray(self.images).reshape(-1)
        digest.update(flat[:: max(1, flat.size // 65536)].tobytes())
        digest.update(_ints_bytes(self.labels))
        return digest.hexdigest()[:32]


def _hash_file_stats(digest: Any, paths: Sequence[Path]) -> None:
    """Absolute path, size, modification time, inode and status-change time of each file (a missing file hashes as
    missing). The inode and ctime are what a copy cannot preserve: ``cp -p``, ``rsync -a`` and ``tar x`` keep path,
    size and mtime of a replaced image, but give it a new ctime (and, by rename, a new inode)."""
    for path in paths:
        name = os.path.abspath(path)
        try:
            stat = os.stat(name)
            digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}|missing\n".encode())


def _ints_bytes(values: Sequence[int]) -> bytes:
    import numpy as np

    return np.asarray(values, dtype=np.int64).tobytes()


@dataclass
class CheckReport:
    """What ``starft data check`` found: problems (empty when the layout is right) and counts; for a registered
    dataset, ``get_it`` says where to get it and how to lay it out (one line each)."""

    name: str
    root: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    get_it: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # with --deep: every image that cannot be decoded

    @property
    def ok(self) -> bool:
        return not self.problems
