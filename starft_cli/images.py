"""Finding and opening input images, with errors that name the file."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from starft_cli.errors import ImageError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_name(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def expand_image_args(args: Iterable[str]) -> list[Path]:
    """Expand files, directories (recursively, image suffixes only) and glob patterns, in order, once each."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for arg in args:
        path = Path(arg).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
            if not images:
                raise ImageError(
                    f"directory {path} holds no images",
                    f"Images are files ending in {', '.join(sorted(IMAGE_SUFFIXES))}",
                )
            for image in images:
                add(image)
        elif path.is_file():
            add(path)
        elif glob.has_magic(arg):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
            matches = [m for m in matches if m.is_file() and is_image_name(m)]
            if not matches:
                raise ImageError(f"pattern '{arg}' matches no images", "Check the pattern and quote it for the shell")
            for match in matches:
                add(match)
        else:
            raise ImageError(f"no such file or directory: {arg}", "Check the path")
    if not found:
        raise ImageError("no images given", "Pass image files, directories or glob patterns")
    return found


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image fully (decoding it now, so a truncated file fails here) as RGB."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}", "Check the path") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image", "Pass JPEG, PNG, WebP, BMP, GIF or TIFF files") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{path} is corrupt or truncated ({' '.join(str(exc).split())})", "Re-create or remove the file"
        ) from None
