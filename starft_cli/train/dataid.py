"""The identity of a run's training data, recorded at its start (``RUN/data.json``) and checked on resume.

A resumed run must continue on the data it started on: a class added or removed changes the head and the steps
per epoch, and other files change what "the same run" means. The identity holds the class names in order, the
number of samples, and per class the number of samples and a hash of what identifies them: for image files each
file's path relative to the data's common folder and its size (not its modification time, so copying the data
elsewhere and pointing ``data_root`` there keeps the identity); for in-memory arrays the pixels; captions where the
data have them. No image is decoded; files are only ``stat``-ed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

FORMAT = 1
SHOWN = 3  # changes named in the message; the rest are counted


def data_identity(dataset: Any) -> dict[str, Any]:
    """The identity of ``dataset`` (an :class:`~starft_cli.data.base.ImageDataset`): a JSON-ready dict with
    ``classes`` (names in label order), ``samples`` (int), ``counts`` and ``hashes`` (one per class; sha256 hex,
    32 characters)."""
    classes = list(dataset.classnames)
    labels = [int(y) for y in dataset.labels]
    digests = [hashlib.sha256() for _ in classes]
    counts = [0] * len(classes)
    paths = getattr(dataset, "paths", None)
    images = getattr(dataset, "images", None)
    captions = getattr(dataset, "captions", None)
    names = [os.path.abspath(p) for p in paths] if paths else []
    root = os.path.commonpath(names) if names else ""
    if len(names) == 1:
        root = os.path.dirname(root)
    skip = len(os.path.join(root, ""))  # each name relative to the common folder
    sizes = _sizes(names)
    for i, y in enumerate(labels):
        counts[y] += 1
        digest = digests[y]
        if paths:
            digest.update(f"{names[i][skip:]}|{sizes[i]}\n".encode())
        elif images is not None:
            digest.update(memoryview(images[i]).tobytes())
        else:
            digest.update(f"{i}\n".encode())
        if captions is not None:
            digest.update(f"|{captions[i]}\n".encode())
    return {
        "format": FORMAT,
        "classes": classes,
        "samples": len(labels),
        "counts": counts,
        "hashes": [d.hexdigest()[:32] for d in digests],
    }


def _size(name: str) -> int | str:
    try:
        return os.stat(name).st_size
    except OSError:
        return "missing"


def _sizes(names: Sequence[str]) -> list[int | str]:
    """Each file's size ("missing" for none), stat-ed by a few threads (a stat waits on the file system, not on
    Python: on a network file system this is where the time goes)."""
    if len(names) < 4096:
        return [_size(n) for n in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(_size, names, chunksize=1024))


def identity_json(identity: Mapping[str, Any]) -> str:
    return json.dumps(dict(identity), indent=1) + "\n"


def identity_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between the identity recorded at the start (``before``) and the data now, in words (empty when
    nothing does): classes added, removed or reordered; else per class, a different number of images or other
    files."""
    old, new = list(before.get("classes", [])), list(now["classes"])
    if old != new:
        added = [c for c in new if c not in old]
        removed = [c for c in old if c not in new]
        changes = [f"class '{c}' was added" for c in added] + [f"class '{c}' was removed" for c in removed]
        return changes or ["the classes are in another order"]
    changes = []
    for name, a, b, ha, hb in zip(old, before["counts"], now["counts"], before["hashes"], now["hashes"], strict=True):
        if a != b:
            changes.append(f"class '{name}' had {a} images, now {b}")
        elif ha != hb:
            changes.append(f"class '{name}' has other files (or sizes) than it had")
    return changes


def describe_changes(changes: Sequence[str]) -> str:
    """The first few changes, joined, and how many more there are."""
    shown = "; ".join(changes[:SHOWN])
    return shown + (f"; and {len(changes) - SHOWN} more" if len(changes) > SHOWN else "")
