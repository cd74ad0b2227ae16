"""A small reader of MATLAB level-5 ``.mat`` files: numeric, char, cell and struct arrays (zlib-compressed or not).

Flowers102 and Stanford Cars ship their labels in such files; torchvision reads them with scipy, which is not a
dependency of starft. Where scipy is installed and the files are the official ones, torchvision's readers are
used instead (see :mod:`starft_cli.data.transfer`). Values come back squeezed, like ``scipy.io.loadmat(...,
squeeze_me=True)``: numeric arrays as numpy arrays (a 1x1 array as a Python number), char arrays as ``str``,
cell arrays as lists, struct arrays as lists of dicts (one element: a dict).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from starft_cli.errors import DataError

_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
MI_MATRIX, MI_COMPRESSED, MI_UTF8, MI_UTF16 = 14, 15, 16, 17
MX_CELL, MX_STRUCT, MX_CHAR = 1, 2, 4
MX_NUMERIC = set(range(6, 16))


class _Reader:
    def __init__(self, data: bytes, endian: str, source: str) -> None:
        self.data = data
        self.pos = 0
        self.e = endian
        self.source = source

    def fail(self, what: str) -> DataError:
        return DataError(f"cannot read {self.source}: {what}", "Re-extract the dataset's .mat files")

    def tag(self) -> tuple[int, int, bool]:
        if self.pos + 8 > len(self.data):
            raise self.fail("truncated data element")
        first, second = struct.unpack_from(self.e + "II", self.data, self.pos)
        if first >> 16:  # small data element: type and size share 4 bytes, data in the next 4
            self.pos += 4
            return first & 0xFFFF, first >> 16, True
        self.pos += 8
        return first, second, False

    def element(self) -> tuple[int, bytes]:
        kind, size, small = self.tag()
        if self.pos + size > len(self.data):
            raise self.fail("truncated data element")
        payload = self.data[self.pos : self.pos + size]
        if small:
            self.pos += 4
        elif kind == MI_COMPRESSED:
            self.pos += size
        else:
            self.pos += size + (-size % 8)
        return kind, payload

    def numbers(self, kind: int, payload: bytes) -> np.ndarray:
        if kind not in _NUMERIC:
            raise self.fail(f"unsupported number type {kind}")
        return np.frombuffer(payload, dtype=np.dtype(_NUMERIC[kind]).newbyteorder(self.e))


def _squeeze(array: np.ndarray) -> Any:
    array = array.squeeze()
    return array.item() if array.ndim == 0 else array


def _matrix(payload: bytes, endian: str, source: str) -> tuple[str, Any]:
    r = _Reader(payload, endian, source)
    if not payload:
        return "", np.zeros((0,))
    _, flags = r.element()
    mx_class = flags[0] if endian == "<" else flags[3]
    complex_ = bool((flags[1] if endian == "<" else flags[2]) & 0x08)
    kind, dims_raw = r.element()
    dims = [int(d) for d in r.numbers(kind, dims_raw)]
    _, name_raw = r.element()
    name = name_raw.decode("latin1")
    count = int(np.prod(dims)) if dims else 0
    if mx_class in MX_NUMERIC:
        kind, raw = r.element()
        values = r.numbers(kind, raw)
        if complex_:
            kind, raw = r.element()
            values = values + 1j * r.numbers(kind, raw)
        return name, _squeeze(values.reshape(dims, order="F"))
    if mx_class == MX_CHAR:
        kind, raw = r.element()
        if kind == MI_UTF8:
            codes = list(raw.decode("utf-8"))
        elif kind == MI_UTF16:
            codes = list(raw.decode("utf-16-le" if endian == "<" else "utf-16-be"))
        else:
            codes = [chr(int(c)) for c in r.numbers(kind, raw)]
        chars = np.array(codes or [""], dtype=object)
        if count == 0:
            return name, ""
        grid = chars.reshape(dims, order="F")
        rows = ["".join(row) for row in grid.reshape(dims[0], -1)]
        return name, rows[0] if len(rows) == 1 else rows
    if mx_class == MX_CELL:
        items = []
        for _ in range(count):
            kind, raw = r.element()
            items.append(_matrix(raw, endian, source)[1])
        return name, items[0] if count == 1 else items
    if mx_class == MX_STRUCT:
        kind, raw = r.element()
        length = int(r.numbers(kind, raw)[0])
        _, raw = r.element()
        fields = [raw[i : i + length].split(b"\0", 1)[0].decode("latin1") for i in range(0, len(raw), length)]
        records = []
        for _ in range(count):
            record = {}
            for field in fields:
                kind, raw = r.element()
                record[field] = _matrix(raw, endian, source)[1]
            records.append(record)
        return name, records[0] if count == 1 else records
    raise r.fail(f"unsupported array class {mx_class}")


def load_mat(path: str | Path) -> dict[str, Any]:
    """Read the variables of a level-5 MAT-file (see the module docstring for the value types)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})") from exc
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise DataError(f"{path} is not a MATLAB 5 .mat file", "Use the files as distributed with the dataset")
    endian = "<" if data[126:128] == b"IM" else ">"
    reader = _Reader(data, endian, str(path))
    reader.pos = 128
    out: dict[str, Any] = {}
    while reader.pos < len(data):
        kind, payload = reader.element()
        if kind == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise reader.fail(f"corrupt compressed element ({exc})") from exc
            inner = _Reader(payload, endian, str(path))
            kind, payload = inner.element()
        if kind != MI_MATRIX:
            continue
        name, value = _matrix(payload, endian, str(path))
        out[name] = value
    return out
