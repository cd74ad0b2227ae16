"""Datasets stored as webdataset shards (``--data wds:PATH/{000..099}.tar``), read with the ``webdataset`` package.

The format is the one open_clip's training and CLIP_benchmark's ``wds/`` datasets use: each shard is a tar file of
samples, the files of one sample share a key (``s0000042.jpg``, ``s0000042.cls``...). The keys read here:

- image: the first of ``.webp``, ``.png``, ``.jpg``, ``.jpeg`` present (CLIP_benchmark 1.6.2's
  ``build_wds_dataset`` reads these extensions, in this order);
- label: ``.cls``, the class index as decimal text (CLIP_benchmark: ``to_tuple(..., "cls")``);
- caption (training): ``.txt`` (open_clip's training key), optional;
- group: ``.group``, a group index as decimal text (worst-group accuracy), optional; for the WILDS copies
  the ``.npy`` metadata row gives the region (see :mod:`starft_cli.data.sources.hub`).

Class names come from ``classnames.txt`` (one per line, line N names label N) beside the shards or one folder up
(the Hub layout: ``classnames.txt`` at the top, shards under ``<split>/``), or from ``--classnames``; group names
from ``groupnames.txt`` likewise. ``zeroshot_classification_templates.txt`` there, when present, is the default
template set, as in CLIP_benchmark.

Random access (what evaluation and training need) comes from an index made in one pass over the shards (labels,
captions, groups and the order of the keys, cached under the starft cache by shard path, size and time); an image
is read by loading its shard's samples with webdataset, keeping recently used shards in memory up to a budget.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.data.base import ImageDataset
from starft_cli.errors import DataError, ImageError

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
LABEL_EXT = "cls"
CAPTION_EXT = "txt"
GROUP_EXT = "group"
META_EXT = "npy"
CLASSNAMES_FILE = "classnames.txt"
GROUPNAMES_FILE = "groupnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
SHARD_BUDGET_BYTES = int(os.environ.get("STARFT_WDS_CACHE_MB", "1024")) * 2**20  # shards kept in memory, per process
INDEX_VERSION = 1


# Fetchers of remote shards, by prefix of the wds: spec (``hf-hub:``: starft_cli.data.sources.hub registers it):
# spec -> (the folder of the fetched shards, the source to record)
REMOTE: dict[str, Callable[[str], tuple[Path, dict[str, Any]]]] = {}


class ShardError(DataError):
    """A shard that cannot be read (truncated, not a tar file, a sample without an image or label)."""


def expand_shards(spec: str) -> list[Path]:
    """The shard files a ``wds:`` spec names: brace ranges (``{000..099}``, webdataset's ``braceexpand``), ``::``
    separated lists, a folder (every ``*.tar`` in it, sorted numerically) or a single file.

    Raises :class:`DataError` when a named shard does not exist or nothing is named."""
    from webdataset.shardlists import expand_urls

    path = Path(spec).expanduser()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        if not shards:
            raise DataError(f"{path} holds no .tar shards", "Point wds: at the shards, e.g. wds:DIR/{0..9}.tar")
        return shards
    shards = [Path(url).expanduser() for url in expand_urls(spec)]
    absent = [p for p in shards if not p.is_file()]
    if absent:
        raise DataError(
            f"{len(absent)} of {len(shards)} shard(s) named by wds:{spec} do not exist (e.g. {absent[0]})",
            "Check the path and the brace range, e.g. wds:DIR/{000..099}.tar",
        )
    if not shards:
        raise DataError(f"wds:{spec} names no shard", "e.g. wds:DIR/{000..099}.tar")
    return shards


@dataclass
class ShardIndex:
    """What one pass over the shards learns: per sample its shard, key, image extension, label, and (where the
    shards have them) caption, group and metadata row; ``sizes`` is each shard's size in bytes."""

    shards: list[Path]
    sizes: list[int] = field(default_factory=list)
    shard_of: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    exts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    captions: list[str] | None = None
    groups: list[int] | None = None
    meta: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.keys)


def _text(value: bytes) -> str:
    return value.decode("utf-8").strip()


def _meta_row(value: bytes) -> list[int]:
    import numpy as np

    return [int(v) for v in np.load(io.BytesIO(value), allow_pickle=False).reshape(-1)]


def iterate_shard(path: Path) -> Any:
    """The raw samples of one shard (dicts of extension -> bytes, plus ``__key__``), through webdataset; a shard
    webdataset cannot read raises :class:`ShardError` naming it."""
    import webdataset as wds

    try:
        # every process reads the whole shard it asks for: no split of the (one) shard between DataLoader workers or
        # nodes, which webdataset does by default and which would leave a worker with no samples
        samples = wds.WebDataset(
            [str(path)], shardshuffle=False, empty_check=False, workersplitter=None, nodesplitter=None
        )
        yield from samples
    except Exception as exc:
        raise ShardError(
            f"shard {path} is damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
            "Delete it and fetch it again (`starft data download NAME --force` for a downloaded dataset)",
        ) from exc


def _stat_key(shards: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"wds-index|{INDEX_VERSION}|".encode())
    for path in shards:
        st = path.stat()
        digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def build_index(shards: Sequence[Path], *, use_cache: bool = True) -> ShardIndex:
    """Read every shard once (webdataset) and index its samples; the index is cached under the starft cache,
    keyed by the shards' paths, sizes and times.

    Raises :class:`ShardError` for a damaged shard or a sample without an image or a ``.cls`` label."""
    from starft_cli.paths import atomic_write_text, cache_path

    shards = [Path(p) for p in shards]
    key = _stat_key(shards)
    cached = cache_path("wds-index", f"{key}.json")
    if use_cache and cached.is_file():
        try:
            data = json.loads(cached.read_text(encoding="utf-8"))
            return ShardIndex(shards=shards, **data)
        except (OSError, ValueError, TypeError):
            logger.debug("wds index %s unreadable; rebuilding", cached)
    index = ShardIndex(shards=shards, sizes=[p.stat().st_size for p in shards])
    captions: list[str | None] = []
    groups: list[int | None] = []
    meta: list[list[int] | None] = []
    kept = 0
    for number, path in enumerate(shards):
        images: dict[str, bytes] = {}
        for sample in iterate_shard(path):
            sample_key = sample["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is not None:
                images[sample_key] = sample[ext]
            if ext is None or LABEL_EXT not in sample:
                what = "an image (.webp/.png/.jpg/.jpeg)" if ext is None else "a label (.cls)"
                raise ShardError(
                    f"sample '{sample_key}' in shard {path} has no {what}",
                    "Every sample needs an image and a .cls label (see the README's data section)",
                )
            try:
                label = int(_text(sample[LABEL_EXT]))
                group = int(_text(sample[GROUP_EXT])) if GROUP_EXT in sample else None
                row = _meta_row(sample[META_EXT]) if META_EXT in sample else None
            except (ValueError, UnicodeDecodeError) as exc:
                raise ShardError(f"sample '{sample_key}' in shard {path}: unreadable label or group ({exc})") from exc
            index.shard_of.append(number)
            index.keys.append(sample_key)
            index.exts.append(ext)
            index.labels.append(label)
            captions.append(_text(sample[CAPTION_EXT]) if CAPTION_EXT in sample else None)
            groups.append(group)
            meta.append(row)
        kept += index.sizes[number]
        if kept <= _CACHE.budget:  # the images just read serve the first reads (one pass over the bytes, not two)
            _CACHE.put(path, images, index.sizes[number])
    if any(c is not None for c in captions):
        index.captions = [c or "" for c in captions]
    if any(g is not None for g in groups):
        if any(g is None for g in groups):
            raise ShardError("some samples have a .group and others do not", "Give every sample a .group")
        index.groups = [int(g) for g in groups if g is not None]
    if any(m is not None for m in meta):
        index.meta = [m or [] for m in meta]
    if use_cache:
        payload = {k: v for k, v in index.__dict__.items() if k != "shards"}
        atomic_write_text(cached, json.dumps(payload))
    return index


class _ShardCache:
    """Shards' image bytes in memory, least recently used dropped beyond ``budget`` bytes (one per process: a
    DataLoader worker has its own)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: OrderedDict[Path, dict[str, bytes]] = OrderedDict()
        self.sizes: dict[Path, int] = {}
        self.lock = threading.Lock()

    def get(self, path: Path, size: int) -> dict[str, bytes]:
        with self.lock:
            if path in self.items:
                self.items.move_to_end(path)
                return self.items[path]
        images: dict[str, bytes] = {}
        for sample in iterate_shard(path):
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is not None:
                images[sample["__key__"]] = sample[ext]
        self.put(path, images, size)
        return images

    def put(self, path: Path, images: dict[str, bytes], size: int) -> None:
        """Keep ``images`` (key -> image bytes) of the shard ``path`` (``size`` bytes), dropping the least recently
        used shards beyond the budget (the newest is always kept)."""
        with self.lock:
            self.items[path] = images
            self.items.move_to_end(path)
            self.sizes[path] = size
            while len(self.items) > 1 and sum(self.sizes[p] for p in self.items) > self.budget:
                old, _ = self.items.popitem(last=False)
                self.sizes.pop(old, None)


_CACHE = _ShardCache(SHARD_BUDGET_BYTES)


class ShardImageDataset(ImageDataset):
    """An :class:`ImageDataset` over webdataset shards (see the module doc). ``index`` says where each sample
    is; ``source`` describes where the shards came from (recorded in results.json)."""

    def __init__(self, *, index: ShardIndex, source: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        if len(self.labels) != len(index):
            raise ValueError("labels and the shard index differ in length")
        self.source = source or {"kind": "wds", "shards": [str(p) for p in index.shards]}

    def get_image(self, index: int) -> Any:
        from PIL import Image

        from starft_cli.images import check_pixels, to_rgb

        number = self.index.shard_of[index]
        data = _CACHE.get(self.index.shards[number], self.index.sizes[number]).get(self.index.keys[index])
        name = self.describe(index)
        if data is None:
            raise ImageError(f"{name}: the image is no longer in its shard (the shard changed after indexing)")
        try:
            img = Image.open(io.BytesIO(data))
            check_pixels(img, name)
            img.load()
            return to_rgb(img)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"{name}: unreadable image ({type(exc).__name__}: {exc})") from exc

    def describe(self, index: int) -> str:
        shard = self.index.shards[self.index.shard_of[index]]
        return f"{shard}:{self.index.keys[index]}.{self.index.exts[index]}"

    def fingerprint(self) -> str:
        """Hash of the shards' paths, sizes and times, the keys read and the labels."""
        digest = hashlib.sha256(f"wds|{self.name}|{_stat_key(self.index.shards)}|".encode())
        for i in range(len(self)):
            digest.update(self.index.keys[i].encode() + b"\n")
        import numpy as np

        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        if self.groups is not None:
            digest.update(np.asarray(self.groups, dtype=np.int64).tobytes())
        return digest.hexdigest()[:32]


def _beside(shards: Sequence[Path], filename: str) -> Path | None:
    """``filename`` in the shards' folder or the folder above (the Hub layout)."""
    folder = shards[0].parent
    for candidate in (folder / filename, folder.parent / filename):
        if candidate.is_file():
            return candidate
    return None


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped (CLIP_benchmark reads classnames.txt so)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_shards(
    spec: str,
    classnames_file: str | Path | None = None,
    *,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ShardImageDataset:
    """Your own data as webdataset shards (``wds:SPEC``; see the module doc for the keys and the class-name file).

    Raises :class:`DataError` for absent shards, no class names, a label outside the class list, or a group
    outside ``groupnames.txt``; :class:`ShardError` for a damaged shard."""
    source = None
    if spec.startswith("hf-hub:"):  # a dataset repository on the Hub, in its webdataset layout
        if "hf-hub:" not in REMOTE:
            importlib.import_module("starft_cli.data.sources.hub")  # registers it (named, not imported: no cycle)
        folder, source = REMOTE["hf-hub:"](spec)
        shards = expand_shards(str(folder))
    else:
        shards = expand_shards(spec)
    index = build_index(shards)
    names_path = Path(classnames_file) if classnames_file else _beside(shards, CLASSNAMES_FILE)
    if names_path is None:
        raise DataError(
            f"wds:{spec} has no class names",
            f"Put a {CLASSNAMES_FILE} (one name per line; line N names label N) beside the shards or one folder up, "
            "or pass `classnames_file`",
            param="classnames_file",
        )
    classnames = read_lines(names_path)
    bad = [y for y in index.labels if not 0 <= y < len(classnames)]
    if bad:
        raise DataError(
            f"wds:{spec}: label {bad[0]} is outside the {len(classnames)} classes of {names_path}",
            "Labels (.cls) index the class names file from 0",
        )
    group_names = None
    if index.groups is not None:
        group_path = _beside(shards, GROUPNAMES_FILE)
        count = max(index.groups) + 1
        group_names = read_lines(group_path) if group_path else [f"group {g}" for g in range(count)]
        if count > len(group_names):
            raise DataError(f"wds:{spec}: group {count - 1} is outside the groups of {group_path}")
    templates = _beside(shards, TEMPLATES_FILE)
    return ShardImageDataset(
        index=index,
        name=name or f"wds:{spec}",
        classnames=classnames,
        labels=index.labels,
        groups=index.groups,
        group_names=group_names,
        captions=index.captions,
        templates=str(templates) if templates else "imagenet80",
        source=source,
    )
