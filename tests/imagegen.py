"""Generated images and datasets for the tests (real files in the real layouts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30), (160, 40, 200), (30, 200, 200)]


def make_image(
    path: Path, seed: int, size: tuple[int, int] = (48, 40), color: tuple[int, int, int] | None = None
) -> Path:
    """A small JPEG/PNG (by suffix): a class colour plus seeded noise."""
    rng = np.random.RandomState(seed)
    width, height = size
    base = np.array(color if color is not None else (128, 128, 128), dtype=np.float32)
    pixels = base + rng.normal(0, 25, size=(height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_class_folders(
    root: Path, classes: list[str], per_class: int = 4, size: tuple[int, int] = (48, 40), suffix: str = ".jpg"
) -> Path:
    """``root/<class>/<i>.jpg`` with one colour per class."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            make_image(root / name / f"{i}{suffix}", seed=1000 * c + i, size=size, color=PALETTE[c % len(PALETTE)])
    return root


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-sample PNG (``pixels`` uint16 ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA), written by hand:
    PIL cannot save 16-bit colour PNGs."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def make_mode_image(path: Path, kind: str, size: tuple[int, int] = (24, 20)) -> tuple[Path, np.ndarray]:
    """A file of one image kind (``jpeg-RGB``, ``png-I;16``, ``gif-animated``...), and the RGB uint8 pixels
    ``[H, W, 3]`` the one definition of an image as RGB (starft_cli.images.to_rgb) must give for it."""
    rng = np.random.RandomState(len(kind))
    width, height = size
    rgb = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
    grey = rng.randint(0, 256, (height, width)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, mode = kind.split("-", 1)
    if kind in ("jpeg-RGB", "jpeg-L", "jpeg-CMYK"):
        source = Image.fromarray(rgb).convert(mode) if mode != "L" else Image.fromarray(grey)
        source.save(path, "JPEG", quality=90)
        return path, np.asarray(Image.open(path).convert("RGB"))  # lossy: PIL's own decode is the reference
    if mode in ("RGB", "L") and fmt in ("png", "bmp", "webp", "tiff"):
        image = Image.fromarray(rgb) if mode == "RGB" else Image.fromarray(grey)
        image.save(path, lossless=True) if fmt == "webp" else image.save(path)
        return path, np.asarray(image.convert("RGB"))
    if kind == "png-RGBA":
        alpha = rng.randint(0, 256, (height, width, 1)).astype(np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)
        return path, rgb  # alpha dropped
    if kind == "png-LA":
        Image.fromarray(np.stack([grey, grey[::-1]], axis=2), "LA").save(path)
        return path, np.repeat(grey[:, :, None], 3, axis=2)
    if kind in ("png-P", "png-P-transparency", "gif-P"):
        image = Image.fromarray(rgb).quantize(16)
        expected = np.asarray(image.convert("RGB"))
        if kind == "png-P-transparency":
            image.info["transparency"] = 0
            image.save(path, transparency=0)
        else:
            image.save(path)
        return path, expected  # the palette colours, transparency dropped
    if kind == "png-1":
        bits = grey > 127
        Image.fromarray(bits).convert("1").save(path)
        return path, np.repeat(np.where(bits, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)
    if kind == "png-I;16":
        values = rng.randint(0, 65536, (height, width)).astype(np.uint16)
        Image.fromarray(values).save(path)  # mode I;16
        return path, np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if kind == "png-RGB16":
        values = rng.randint(0, 65536, (height, width, 3)).astype(np.uint16)
        write_png16(path, values)
        return path, (values >> 8).astype(np.uint8)
    if kind == "png-RGBA16":
        values = rng.randint(0, 65536, (height, width, 4)).astype(np.uint16)
        write_png16(path, values)
        return path, (values[:, :, :3] >> 8).astype(np.uint8)
    if kind == "tiff-I":
        values = rng.randint(-1000, 70000, (height, width)).astype(np.int32)
        Image.fromarray(values).save(path)  # mode I
        return path, np.repeat((np.clip(values, 0, 65535) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if kind == "tiff-F":
        values = rng.uniform(-0.2, 1.2, (height, width)).astype(np.float32)
        Image.fromarray(values).save(path)  # mode F
        expected = np.rint(np.clip(values.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        return path, np.repeat(expected[:, :, None], 3, axis=2)
    if kind == "tiff-CMYK":
        image = Image.fromarray(rgb).convert("CMYK")
        image.save(path)
        return path, np.asarray(image.convert("RGB"))
    if kind in ("gif-animated", "png-animated", "webp-animated"):
        frames = [Image.new("RGB", size, colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
        extra = {"lossless": True} if fmt == "webp" else {}
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, **extra)
        return path, np.asarray(frames[0].convert("RGB"))
    raise ValueError(f"unknown image kind {kind}")


IMAGE_KINDS = (
    "jpeg-RGB",
    "jpeg-L",
    "jpeg-CMYK",
    "png-RGB",
    "png-L",
    "png-RGBA",
    "png-LA",
    "png-P",
    "png-P-transparency",
    "png-1",
    "png-I;16",
    "png-RGB16",
    "png-RGBA16",
    "png-animated",
    "gif-P",
    "gif-animated",
    "webp-RGB",
    "webp-animated",
    "bmp-RGB",
    "tiff-RGB",
    "tiff-I",
    "tiff-F",
    "tiff-CMYK",
)
SUFFIX = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}
