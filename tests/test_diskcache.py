"""The one tensor disk cache (starft_cli/diskcache.py): keys, hits, misses, damaged entries, atomic writes."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from starft_cli.diskcache import Entry, TensorCache, cache_key

CACHE: TensorCache[torch.Tensor] = TensorCache("unit", "unit test")
META: TensorCache[tuple[torch.Tensor, list[int]]] = TensorCache("unit_meta", "unit meta", with_meta=True)


def _decode(entry: Entry) -> torch.Tensor | None:
    value = entry.tensors["x"]
    return value if value.shape[0] == 3 else None


class Counter:
    def __init__(self, value: torch.Tensor) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.value


def _get(compute: Counter, cache: TensorCache = CACHE, key: str = "k1", use_cache: bool = True):
    return cache.get_or_compute(key, compute, encode=lambda v: Entry({"x": v}), decode=_decode, use_cache=use_cache)


def test_the_keys_of_the_existing_caches_are_unchanged() -> None:
    """Entries written before the shared cache keep their names (the values are those of starft 0.2.0)."""
    from starft_cli.train.bank import bank_key
    from starft_cli.zeroshot import head_cache_key

    assert head_cache_key("abc", ["cat", "chat é"], ["a {}."]) == "5a7a49d08760351ac26b7fbedaefd728fd07a1db"
    assert bank_key("abc", ["cat", "chat é"], "a photo of a {}.", ["{} in snow."]) == (
        "61f77dd33c574f265f807b13cdd9aa3f1c8d1213"
    )
    payload = {
        "v": 1,
        "model": "abc",
        "data": "def",
        "preprocess": {"size": 224, "mean": [0.5, 0.5, 0.5]},
        "autocast": "None",
        "decode": "rgb1:full",
    }
    assert cache_key(payload, sort_keys=True) == "13f615096f4da4a604d2b3b583bb363932454f1b"
    assert cache_key({"a": 1, "b": 2}) != cache_key({"b": 2, "a": 1})
    assert cache_key({"a": 1, "b": 2}, sort_keys=True) == cache_key({"b": 2, "a": 1}, sort_keys=True)
    assert len(cache_key([1])) == 40 and cache_key([1]) != cache_key([2])


def test_miss_computes_and_stores_then_a_hit_reads(starft_home: Path) -> None:
    compute = Counter(torch.arange(6.0).view(3, 2))
    value, hit = _get(compute)
    assert not hit and compute.calls == 1
    assert CACHE.path("k1") == starft_home / "cache" / "unit" / "k1.safetensors" and CACHE.path("k1").is_file()
    again, hit = _get(compute)
    assert hit and compute.calls == 1
    torch.testing.assert_close(again, value)
    _, hit = _get(compute, key="k2")  # another key is another entry
    assert not hit and compute.calls == 2


def test_an_entry_that_does_not_fit_is_recomputed_quietly(caplog: pytest.LogCaptureFixture) -> None:
    CACHE.save("k1", Entry({"x": torch.zeros(5, 2)}))  # decode wants 3 rows
    compute = Counter(torch.ones(3, 2))
    with caplog.at_level(logging.WARNING):
        value, hit = _get(compute)
    assert not hit and compute.calls == 1 and not caplog.records
    torch.testing.assert_close(value, torch.ones(3, 2))
    assert _get(compute)[1]  # the refitted entry replaced it


@pytest.mark.parametrize("damage", [b"garbage", b"", "truncated", "missing tensor"])
def test_a_damaged_entry_warns_and_is_recomputed(damage, caplog: pytest.LogCaptureFixture) -> None:
    compute = Counter(torch.arange(6.0).view(3, 2))
    _get(compute)
    path = CACHE.path("k1")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "missing tensor":
        CACHE.save("k1", Entry({"y": torch.zeros(3, 2)}))
    else:
        path.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        value, hit = _get(compute)
    assert not hit and compute.calls == 2
    torch.testing.assert_close(value, compute.value)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith(f"ignoring unreadable unit test cache {path} (")
    caplog.clear()
    assert _get(compute)[1] and not caplog.records  # rewritten whole


def test_metadata_travels_in_a_sidecar_and_a_missing_one_is_damage(caplog: pytest.LogCaptureFixture) -> None:
    def decode(entry: Entry):
        return entry.tensors["x"], list(entry.meta["skipped"])

    def get():
        return META.get_or_compute(
            "k",
            lambda: (torch.ones(2), [1]),
            encode=lambda v: Entry({"x": v[0]}, {"skipped": v[1]}),
            decode=decode,
        )

    assert not get()[1]
    assert META.meta_path("k").read_text(encoding="utf-8") == '{"skipped": [1]}'
    (value, skipped), hit = get()
    torch.testing.assert_close(value, torch.ones(2))
    assert hit and skipped == [1]
    META.meta_path("k").unlink()
    with caplog.at_level(logging.WARNING):
        assert not get()[1]
    assert "ignoring unreadable unit meta cache" in caplog.text
    assert META.meta_path("k").is_file()


def test_without_the_cache_nothing_is_read_or_written(starft_home: Path) -> None:
    compute = Counter(torch.ones(3, 2))
    CACHE.save("k1", Entry({"x": torch.zeros(3, 2)}))
    value, hit = _get(compute, use_cache=False)
    assert not hit and compute.calls == 1
    torch.testing.assert_close(value, torch.ones(3, 2))
    assert not (starft_home / "cache" / "unit_meta").exists()
    _get(compute, cache=TensorCache("never", "never"), use_cache=False)
    assert not (starft_home / "cache" / "never").exists()


def test_a_failed_write_warns_keeps_the_old_entry_whole_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, starft_home: Path
) -> None:
    import safetensors.torch

    CACHE.save("k1", Entry({"x": torch.zeros(3, 2)}))
    before = CACHE.path("k1").read_bytes()

    def full_disk(tensors, filename, *args, **kwargs):  # half a file, then the disk is full
        Path(filename).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with caplog.at_level(logging.WARNING):
        CACHE.save("k1", Entry({"x": torch.ones(3, 2)}))
        META.save("m", Entry({"x": torch.ones(1)}, {"skipped": []}))
    assert CACHE.path("k1").read_bytes() == before  # never torn: the old entry is intact
    assert "could not write the unit test cache (No space left on device" in caplog.text
    assert "could not write the unit meta cache" in caplog.text
    assert sorted(p.name for p in (starft_home / "cache").rglob("*") if p.is_file()) == ["k1.safetensors"]
