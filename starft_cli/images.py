"""Finding and opening input images, with errors that name the file."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from starft_cli.errors import ImageError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


APPLEDOUBLE_PREFIX = "._"  # macOS's companion files ("AppleDouble": resource forks, Finder data), not images
MACOS_FOLDER = "__MACOSX"  # where macOS's zip puts those companion files: never a class or a split


def is_appledouble(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a macOS AppleDouble companion file (``._photo.jpg`` beside ``photo.jpg``, written on
    non-Apple file systems, copied by zip and tar): it carries an image suffix but holds no image."""
    return os.path.basename(os.fspath(path)).startswith(APPLEDOUBLE_PREFIX)


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an image file by its suffix (:data:`IMAGE_SUFFIXES`); AppleDouble companions
    (:func:`is_appledouble`) are not images."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not is_appledouble(path)


@dataclass
class ImageListing:
    """Image files found by walking folders (:meth:`add`), and what the walk left out, counted.

    Every walker of image folders in the package goes through this class, so that every one of them follows
    symlinked folders (with a loop guard: a folder whose real path was already listed, through a second link, is
    listed once, and a link to a folder above the one walked, a loop, is not followed) and skips macOS ``._*``
    companion files with a count (:meth:`notes`).
    """

    paths: list[Path] = field(default_factory=list)
    appledouble: int = 0  # macOS '._*' companion files skipped
    repeated: list[Path] = field(default_factory=list)  # symlinked folders skipped: target listed, or above the walk
    macos_folders: int = 0  # __MACOSX folders skipped

    def add(self, folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
        """The image files in ``folder`` (``recursive``: anywhere under it, following symlinked folders), sorted
        by path; they are also appended to :attr:`paths`. A missing folder lists nothing."""
        folder = Path(folder)
        found: list[str] = []
        if recursive:
            top = os.path.realpath(folder)
            seen = {top}  # the loop guard: real paths of the folders walked
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                dirnames.sort()
                for name in list(dirnames):
                    if name == MACOS_FOLDER:
                        dirnames.remove(name)
                        self.macos_folders += 1
                        continue
                    real = os.path.realpath(os.path.join(dirpath, name))
                    if real in seen or top.startswith(real.rstrip(os.sep) + os.sep):  # walked, or above the walk
                        dirnames.remove(name)
                        self.repeated.append(Path(dirpath, name))
                    else:
                        seen.add(real)
                found.extend(os.path.join(dirpath, f) for f in self._images(filenames))
        elif folder.is_dir():
            with os.scandir(folder) as entries:
                files = [e.name for e in entries if e.is_file()]
            found.extend(os.path.join(folder, f) for f in self._images(files))
        paths = sorted(Path(p) for p in found)
        self.paths.extend(paths)
        return paths

    def _images(self, names: Iterable[str]) -> list[str]:
        out = []
        for name in names:
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            if name.startswith(APPLEDOUBLE_PREFIX):
                self.appledouble += 1
            else:
                out.append(name)
        return out

    def notes(self) -> list[str]:
        """One line per kind of file left out (none when nothing was), e.g. ``skipped 3 macOS '._*' companion
        file(s) (not images)``."""
        lines = []
        if self.appledouble:
            lines.append(f"skipped {self.appledouble} macOS '._*' companion file(s) (AppleDouble metadata, not images)")
        if self.macos_folders:
            lines.append(f"skipped {self.macos_folders} macOS '{MACOS_FOLDER}' folder(s) (zip metadata, not images)")
        if self.repeated:
            lines.append(
                f"skipped {len(self.repeated)} symlinked folder(s) that loop back or were already listed through "
                f"another link, e.g. {self.repeated[0]}"
            )
        return lines


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """:meth:`ImageListing.add` for one folder, logging what it left out (one warning line per kind)."""
    listing = ImageListing()
    paths = listing.add(folder, recursive)
    for line in listing.notes():
        logger.warning("%s: %s", folder, line)
    return paths


def _glob(pattern: str, listing: ImageListing) -> list[Path]:
    """The paths matching ``pattern`` by :mod:`glob`'s rules (``*``, ``?``, ``[...]``, ``**`` for any depth;
    hidden names only where the pattern starts with a dot), sorted; ``**`` follows symlinked folders with a loop
    guard (the standard library's recursive glob has none and never ends on a link loop)."""
    parts = Path(pattern).parts
    k = 0
    while k < len(parts) and not glob.has_magic(parts[k]):
        k += 1
    base = Path(*parts[:k]) if k else Path()
    out: list[Path] = []

    def visit(folder: Path, pats: tuple[str, ...], ancestors: frozenset[str]) -> None:
        if not pats:
            out.append(folder)
            return
        pat, more = pats[0], pats[1:]
        if pat == "**":
            visit(folder, more, ancestors)
            if not more:
                return  # a folder matched by a trailing ** is expanded with everything under it
            for child in _subdirs(folder):
                real = os.path.realpath(child)
                if real in ancestors:
                    listing.repeated.append(child)
                else:
                    visit(child, pats, ancestors | {real})
            return
        if not glob.has_magic(pat):
            child = folder / pat
            if not more:
                if os.path.lexists(child):
                    out.append(child)
            elif child.is_dir():
                visit(child, more, ancestors)
            return
        try:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries)
        except OSError:
            return
        for name in names:
            if (name.startswith(".") and not pat.startswith(".")) or not fnmatch.fnmatchcase(name, pat):
                continue
            child = folder / name
            if not more:
                out.append(child)
            elif child.is_dir():
                visit(child, more, ancestors | {os.path.realpath(child)})

    if base == Path() or base.is_dir():
        visit(base, parts[k:], frozenset({os.path.realpath(base)}))
    return sorted(out)


def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(
                folder / e.name for e in entries if not e.name.startswith(".") and e.name != MACOS_FOLDER and e.is_dir()
            )
    except OSError:
        return []


def expand_image_args(args: Iterable[str]) -> list[Path]:
    """Expand files, directories (recursively, image suffixes only, following symlinked folders) and glob patterns
    (a folder they match is expanded as a directory is), in order, once each. macOS ``._*`` companion files
    are skipped with a warning that counts them.

    Raises :class:`~starft_cli.errors.ImageError` for an argument that names nothing, a folder without images and
    a pattern that matches none."""
    found: list[Path] = []
    seen: set[Path] = set()
    listing = ImageListing()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for arg in args:
        path = Path(arg).expanduser()
        if path.is_dir():
            images = listing.add(path)
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
            matches: list[Path] = []
            for match in _glob(os.path.expanduser(arg), listing):
                if match.is_dir():
                    matches.extend(listing.add(match))
                elif match.is_file() and is_image_name(match):
                    matches.append(match)
                elif is_appledouble(match) and match.suffix.lower() in IMAGE_SUFFIXES:
                    listing.appledouble += 1
            if not matches:
                raise ImageError(f"pattern '{arg}' matches no images", "Check the pattern and quote it for the shell")
            for match in matches:
                add(match)
        else:
            raise ImageError(f"no such file or directory: {arg}", "Check the path")
    for line in listing.notes():
        logger.warning("%s", line)
    if not found:
        raise ImageError("no images given", "Pass image files, directories or glob patterns")
    return found


# The version of :func:`to_rgb`'s definition: caches of decoded pixels or features include it in their keys.
RGB_VERSION = 2

# What reading an image as RGB uint8 does to each kind of file, as ``data check --deep`` reports it.
CONVERSION_NOTES = {
    "16-bit": "are 16-bit: scaled to 8 bits (the high byte, value >> 8)",
    "32-bit": "are 32-bit integer: clipped to 0..65535 and scaled to 8 bits (value >> 8)",
    "float": "are 32-bit float: read as values in 0..1 (clipped), times 255, rounded",
    "animated": "are animated: the first frame is used",
    "alpha": "have an alpha channel or transparency: alpha is dropped (as PIL's convert('RGB'))",
    "cmyk": "are CMYK: converted to RGB (PIL's conversion)",
    "exif": "have an EXIF orientation: not applied (datasets follow the benchmark convention; classify applies it)",
}
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
# EXIF orientation (tag 0x0112) -> the PIL transpose that undoes it (as PIL's ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def _is_16_bit(img: Image.Image) -> bool:
    """Whether the file stores 16 bits per sample (PIL reads 16-bit colour PNG/TIFF as 8-bit RGB, the high
    byte, and 16-bit grey as mode ``I;16``)."""
    if img.mode.startswith("I;16"):
        return True
    tile = getattr(img, "tile", None) or []
    rawmode = str(getattr(tile[0], "args", "") if tile else "")
    return ";16" in rawmode


def conversions(img: Image.Image) -> list[str]:
    """The keys of :data:`CONVERSION_NOTES` that apply to an opened (not yet loaded) image."""
    found = []
    if _is_16_bit(img):
        found.append("16-bit")
    elif img.mode == "I":
        found.append("32-bit")
    if img.mode == "F":
        found.append("float")
    if getattr(img, "n_frames", 1) > 1:
        found.append("animated")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        found.append("alpha")
    if img.mode == "CMYK":
        found.append("cmyk")
    try:
        if img.getexif().get(0x0112, 1) not in (1, None):
            found.append("exif")
    except Exception:  # a damaged EXIF block: the pixels are still read
        pass
    return found


def to_rgb(img: Image.Image) -> Image.Image:
    """THE definition of "an image as RGB uint8", used by every path (classify, eval, training, data check):

    - the first frame of an animated file (GIF, APNG, WebP, multi-page TIFF);
    - 16 bits per sample: the high byte (``value >> 8``), which is what PIL does itself for 16-bit colour PNGs,
      so 16-bit grey (``I;16``) and 16-bit colour agree; 32-bit integer (``I``) is clipped to 0..65535 first;
    - 32-bit float (``F``): values in 0..1 (clipped), times 255, rounded;
    - palette (``P``, ``PA``), 1-bit, grey, grey+alpha, RGBA, CMYK, YCbCr: PIL's ``convert('RGB')``, i.e. alpha
      and transparency are dropped (not composited), as open_clip's and torchvision's pipelines do;
    - EXIF orientation is not applied here (see :func:`open_image`).
    """
    import numpy as np
    from PIL import Image

    if getattr(img, "n_frames", 1) > 1 and img.tell() != 0:
        img.seek(0)
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    with warnings.catch_warnings():  # "Palette images with Transparency ...": the transparency is dropped, as said
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def too_many_pixels(img: Image.Image) -> bool:
    """Whether an opened (not yet decoded) image declares more pixels than PIL's ``Image.MAX_IMAGE_PIXELS``
    (about 89 million; PIL itself only warns up to twice that): such a file is refused, not decoded."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and img.size[0] * img.size[1] > limit


def check_pixels(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Refuse an image with :func:`too_many_pixels` (a decompression bomb) before it is decoded.

    Raises:
        ImageError: naming the file, its size and the limit.
    """
    if too_many_pixels(img):
        from PIL import Image

        width, height = img.size
        raise ImageError(
            f"{path} is refused as a possible decompression bomb: {width}x{height} = {width * height} pixels, more "
            f"than the limit of {Image.MAX_IMAGE_PIXELS}",
            "Resize the image, or remove it",
        )


def read_image(path: str | os.PathLike[str], exif_transpose: bool = False) -> tuple[Image.Image, list[str]]:
    """Open and fully decode an image (so a truncated file fails here) as RGB (see :func:`to_rgb`), with the
    :data:`CONVERSION_NOTES` keys that applied. ``exif_transpose`` applies the EXIF orientation (classify does,
    for photos; datasets do not, as torchvision's and open_clip's benchmark pipelines do not).

    Raises :class:`~starft_cli.errors.ImageError` naming the file when it is missing, not an image, or damaged.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, never decoded
            with Image.open(path) as img:
                check_pixels(img, path)
                notes = conversions(img)
                img.load()
                rgb = to_rgb(img)
                if exif_transpose and "exif" in notes:
                    method = _EXIF_TRANSPOSE.get(int(img.getexif().get(0x0112, 1)))
                    if method is not None:
                        rgb = rgb.transpose(Image.Transpose[method])
                return rgb, notes
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}", "Check the path") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{path} is refused as a possible decompression bomb ({' '.join(str(exc).split())})",
            "Resize the image, or remove it",
        ) from None
    except UnidentifiedImageError:
        if is_image_name(path):
            raise ImageError(
                f"{path} is damaged: its content is not a readable {path.suffix.lstrip('.').upper()} image",
                "Re-create or remove the file",
            ) from None
        raise ImageError(f"{path} is not an image", "Pass JPEG, PNG, WebP, BMP, GIF or TIFF files") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{path} is corrupt or truncated ({' '.join(str(exc).split())})", "Re-create or remove the file"
        ) from None


def open_image(path: str | os.PathLike[str], exif_transpose: bool = False) -> Image.Image:
    """An image file as an RGB PIL image, by the one definition of :func:`to_rgb` (see :func:`read_image`)."""
    return read_image(path, exif_transpose)[0]
