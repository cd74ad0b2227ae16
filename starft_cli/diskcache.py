"""The one on-disk cache of computed tensors (zero-shot heads, eval features, the spurious text bank).

An entry is ``<cache>/<folder>/<key>.safetensors`` (and, for caches with metadata, a JSON sidecar ``<key>.json``).
The key is a hash of everything the tensors depend on (:func:`cache_key`); a changed input is a new key, so an
entry is never updated in place. A lookup that cannot read an entry (a damaged or truncated file, a missing
sidecar, tensors of the wrong shape for the request) warns and recomputes: a cache entry is never trusted over
recomputing. Entries are written atomically (:func:`~starft_cli.paths.atomic_path`), the sidecar first, and a
failed write (full disk, read-only cache) is a warning, not an error (:func:`~starft_cli.paths.cache_write`).
``safetensors`` holds plain tensors only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from starft_cli.paths import atomic_path, cache_path, cache_write

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def cache_key(payload: Any, *, sort_keys: bool = False) -> str:
    """40 hex digits of the sha256 of ``payload`` as JSON (``ensure_ascii=False``; values JSON cannot hold are
    written as ``str``). ``sort_keys`` sorts mapping keys; without it their order is part of the key."""
    text = json.dumps(payload, sort_keys=sort_keys, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


@dataclass
class Entry:
    """What one cache entry holds: named tensors (saved on CPU) and, for caches with metadata, a JSON object."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class TensorCache(Generic[T]):
    """A cache of values ``T`` stored as :class:`Entry` files under ``<cache>/<folder>``.

    ``what`` names it in warnings (``could not write the {what} cache``, ``ignoring unreadable {what} cache``);
    ``with_meta`` adds the JSON sidecar. ``encode`` turns a value into an entry; ``decode`` turns an entry back
    into a value, or returns None when the entry does not fit the request (it may raise on a malformed entry:
    both are a miss).
    """

    folder: str
    what: str
    with_meta: bool = False

    def path(self, key: str) -> Path:
        """The entry's tensor file (not created)."""
        return cache_path(self.folder) / f"{key}.safetensors"

    def meta_path(self, key: str) -> Path:
        """The entry's JSON sidecar (used with ``with_meta`` only)."""
        return self.path(key).with_suffix(".json")

    def load(self, key: str, decode: Callable[[Entry], T | None]) -> T | None:
        """The value stored under ``key``, or None: no entry, an entry ``decode`` refuses, or an unreadable one
        (then a warning names the file; the caller recomputes and the new entry replaces it)."""
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            meta = json.loads(self.meta_path(key).read_text(encoding="utf-8")) if self.with_meta else None
            return decode(Entry(load_file(str(path)), meta))
        except Exception as exc:  # a damaged entry is recomputed, never trusted
            logger.warning("ignoring unreadable %s cache %s (%s)", self.what, path, exc)
            return None

    def save(self, key: str, entry: Entry) -> None:
        """Write ``entry`` under ``key`` atomically (the sidecar first, then the tensors: an entry without its
        sidecar is never complete). A failed write warns and leaves no file of the entry behind."""
        from safetensors.torch import save_file

        path = self.path(key)
        companions = [self.meta_path(key)] if self.with_meta else []
        with cache_write(self.what, *companions):
            if self.with_meta:
                with atomic_path(self.meta_path(key)) as tmp:
                    tmp.write_text(json.dumps(entry.meta or {}), encoding="utf-8")
            with atomic_path(path) as tmp:
                tensors = {name: t.detach().cpu().contiguous() for name, t in entry.tensors.items()}
                save_file(tensors, str(tmp))

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], T],
        *,
        encode: Callable[[T], Entry],
        decode: Callable[[Entry], T | None],
        use_cache: bool = True,
    ) -> tuple[T, bool]:
        """``(value, from_cache)``: the stored value when one fits, else ``compute()``, then stored. With
        ``use_cache=False`` the cache is neither read nor written."""
        if use_cache:
            found = self.load(key, decode)
            if found is not None:
                return found, True
        value = compute()
        if use_cache:
            self.save(key, encode(value))
        return value, False
