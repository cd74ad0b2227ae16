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
