"""Tiny Hub copies of the benchmarks, made from the same images as their folder layouts (tests/layouts.py), in the
exact layout of the clip-benchmark webdataset repositories, and served by the test Hub (tests/hubserver.py)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from starft_cli.data.sources import hub as hubsrc
from tests.hubserver import HubServer

TEMPLATES = "a photo of a {c}.\na picture of a {c}.\n"


def _image_bytes(ds: Any, index: int) -> tuple[str, bytes]:
    """The sample's image as stored in a shard: the file's own bytes, or a lossless PNG of an array image."""
    paths = getattr(ds, "paths", None)
    if paths is not None:
        path = Path(paths[index])
        ext = path.suffix.lower().lstrip(".")
        return ("jpg" if ext in ("jpeg", "jpg") else ext), path.read_bytes()
    buffer = io.BytesIO()
    ds.get_image(index).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def hub_classes(copy: hubsrc.HubCopy, ds: Any) -> tuple[list[str], list[int]]:
    """The copy's class names and, for each of the dataset's labels, the copy's label: the inverse of the
    registration's mapping. ``name`` copies get their classes in reverse order, underscores for spaces (so the
    mapping by name is exercised), ``subset`` copies the 200 published wnids' names."""
    names = list(ds.classnames)
    if copy.classes == "same":
        return names, list(range(len(names)))
    if copy.classes == "subset":
        from starft_cli.data.checks import asset_lines
        from starft_cli.data.imagenet import imagenet_classes

        wnids = list(imagenet_classes()[0])
        subset = [wnids.index(w) for w in asset_lines(str(copy.subset_asset))]
        inverse = {c: j for j, c in enumerate(subset)}
        return [names[c] for c in subset], [inverse.get(c, -1) for c in range(len(names))]
    order = list(reversed(range(len(names))))
    return [names[c].replace(" ", "_") for c in order], [order.index(c) for c in range(len(names))]


def write_shards(ds: Any, folder: Path, to_hub: list[int], per_shard: int = 4, meta: Any = None) -> list[Path]:
    """``ds``'s samples as webdataset shards ``folder/0.tar, 1.tar, ...`` (key, image, .cls; ``meta(i)`` gives
    a ``.npy`` row); returns them."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(ds), per_shard)):
        path = folder / f"{number}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(start, min(start + per_shard, len(ds))):
                ext, data = _image_bytes(ds, i)
                sample = {"__key__": f"s{i:07d}", ext: data, "cls": str(to_hub[ds.labels[i]]).encode()}
                if meta is not None:
                    buffer = io.BytesIO()
                    np.save(buffer, np.asarray(meta(i), dtype=np.int64))
                    sample["npy"] = buffer.getvalue()
                sink.write(sample)
        shards.append(path)
    return shards


def repo_files(ds: Any, copy: hubsrc.HubCopy, split: str = "test", per_shard: int = 4, tmp: Path | None = None) -> dict:
    """The files of a Hub copy of ``ds`` (its split folder named as the registration says), as the Hub holds them."""
    import tempfile

    names, to_hub = hub_classes(copy, ds)
    meta = None
    if copy.region_column is not None:
        meta = lambda i: [ds.groups[i], 14, to_hub[ds.labels[i]], 0]  # noqa: E731  [region, year, y, source]
    folder = copy.splits[split].folder
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        shards = write_shards(ds, Path(work), to_hub, per_shard, meta)
        files = {f"{folder}/{p.name}": p.read_bytes() for p in shards}
    files[f"{folder}/nshards.txt"] = f"{len(files)}\n".encode()
    files["classnames.txt"] = ("\n".join(names) + "\n").encode()
    files["zeroshot_classification_templates.txt"] = TEMPLATES.encode()
    return files


def serve_dataset(hub: HubServer, ds: Any, name: str, monkeypatch: Any, split: str = "test", per_shard: int = 4) -> str:
    """Commit a Hub copy of ``ds`` (the registered dataset ``name``) to the test Hub under the registration's repo,
    and register its number of samples (``monkeypatch``); returns the commit."""
    copy = hubsrc.HUB_COPIES[name]
    splits = dict(copy.splits)
    splits[split] = dataclasses.replace(splits[split], samples=len(ds))
    monkeypatch.setitem(hubsrc.HUB_COPIES, name, dataclasses.replace(copy, splits=splits))
    return hub.commit(copy.repo, repo_files(ds, hubsrc.HUB_COPIES[name], split, per_shard))
