"""Your own data: ``folder:PATH`` (one folder per class) and ``csv:PATH`` (filepath, caption, label)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from starft_cli.data.base import FileImageDataset
from starft_cli.errors import DataError
from starft_cli.images import IMAGE_SUFFIXES

CLASSNAMES_FILE = "classnames.txt"
PATH_COLUMNS = ("filepath", "path", "image", "file")
CAPTION_COLUMNS = ("caption", "title", "text")
LABEL_COLUMNS = ("label", "y", "class", "target")


def read_classnames(path: str | Path) -> list[str]:
    """One class name per line (blank lines ignored)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"cannot read class names from {path} ({exc.strerror})") from exc
    if not names:
        raise DataError(f"{path} holds no class names", "Put one class name per line")
    from starft_cli.data.base import classname_collisions

    collisions = classname_collisions(names)
    if collisions:
        a, b = collisions[0]
        same = "twice" if names[a] == names[b] else f"as '{names[a]}' and '{names[b]}' (alike but for case or spacing)"
        raise DataError(
            f"{path} lists the class name '{names[a]}' {same} (lines {a + 1} and {b + 1})",
            "Each line must be a distinct class name",
        )
    return names


def load_folder(root: Path, split: str | None = None, classnames_file: str | Path | None = None) -> FileImageDataset:
    """``root/<class>/*.jpg`` (or ``root/<split>/<class>/*.jpg``); class names are the folder names with
    underscores as spaces, unless a ``classnames.txt`` (one per line, in sorted-folder order) is given or present."""
    if not root.is_dir():
        raise DataError(f"no such folder: {root}", "folder:PATH takes a folder with one sub-folder per class")
    base = root
    if split is not None and (root / split).is_dir():
        base = root / split
    elif split is not None and split not in ("train", "test") and not (root / split).is_dir():
        raise DataError(f"{root} has no '{split}' split folder")
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if base is root and split is not None and {p.name for p in folders} >= {"train"}:
        raise DataError(f"{root} has split folders but no '{split}'", "Pass an existing split")
    if not folders:
        raise DataError(f"{base} has no class folders", "Lay it out as PATH/<class name>/<image files>")
    names_file = Path(classnames_file) if classnames_file else root / CLASSNAMES_FILE
    if classnames_file or names_file.is_file():
        classnames = read_classnames(names_file)
        if len(classnames) != len(folders):
            raise DataError(
                f"{names_file} has {len(classnames)} names for {len(folders)} class folders in {base}",
                "Give one name per class folder, in sorted folder order",
            )
    else:
        classnames = [p.name.replace("_", " ") for p in folders]
        from starft_cli.data.base import classname_collisions

        collisions = classname_collisions(classnames)
        if collisions:
            shown = "; ".join(f"'{folders[a].name}' and '{folders[b].name}'" for a, b in collisions)
            raise DataError(
                f"class folders {shown} in {base} become one class name ('{classnames[collisions[0][0]]}': "
                "underscores read as spaces, case and spacing aside)",
                "Merge or rename the folders, or name the classes in a classnames.txt (one per folder, sorted order)",
            )
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = _image_files_under(folder)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"no images under {base}", "Each class folder should hold image files")
    return FileImageDataset(name=f"folder:{root}", classnames=classnames, labels=labels, paths=paths)


def _image_files_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by path (``os.walk``: much cheaper than ``Path.rglob``)."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found.extend(os.path.join(dirpath, f) for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in found)  # the same order as sorting rglob's paths


def _pick(header: list[str], options: tuple[str, ...], what: str, path: Path) -> str | None:
    lowered = {h.lower(): h for h in header}
    for option in options:
        if option in lowered:
            return lowered[option]
    if what == "caption":
        return None
    raise DataError(f"{path} has no {what} column", f"Name it one of: {', '.join(options)}")


def load_csv(path: Path, classnames_file: str | Path | None = None) -> FileImageDataset:
    """A CSV/TSV with a header: file path (relative to the CSV), optional caption, label.

    Labels are integers (class names then come from ``--classnames`` or a ``classnames.txt`` beside the
    CSV) or class names (sorted to make the class list).
    """
    if not path.is_file():
        raise DataError(f"no such file: {path}", "csv:PATH takes a CSV or TSV file with a header row")
    text = path.read_text(encoding="utf-8")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.splitlines()[0] if text else False) else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise DataError(f"{path} has no rows")
    header = list(rows[0].keys())
    path_col = _pick(header, PATH_COLUMNS, "file path", path)
    caption_col = _pick(header, CAPTION_COLUMNS, "caption", path)
    label_col = _pick(header, LABEL_COLUMNS, "label", path)
    raw_labels = [(row[label_col] or "").strip() for row in rows]
    names_file = Path(classnames_file) if classnames_file else path.parent / CLASSNAMES_FILE
    if all(v.lstrip("-").isdigit() for v in raw_labels):
        labels = [int(v) for v in raw_labels]
        if classnames_file or names_file.is_file():
            classnames = read_classnames(names_file)
        else:
            raise DataError(f"{path} has integer labels but no class names", "Pass --classnames FILE")
        bad = [y for y in labels if not 0 <= y < len(classnames)]
        if bad:
            raise DataError(f"{path}: label {bad[0]} is outside 0..{len(classnames) - 1}")
    else:
        classnames = sorted(set(raw_labels))
        index = {name: i for i, name in enumerate(classnames)}
        labels = [index[v] for v in raw_labels]
    paths = []
    for number, row in enumerate(rows, start=2):
        value = (row[path_col] or "").strip()
        if not value:
            raise DataError(f"{path}, line {number}: empty file path")
        file = Path(value).expanduser()
        paths.append(file if file.is_absolute() else path.parent / file)
    captions = [(row[caption_col] or "").strip() for row in rows] if caption_col else None
    if captions is not None and any(not c for c in captions):
        raise DataError(f"{path} has an empty caption", "Fill every caption, or drop the caption column")
    return FileImageDataset(name=f"csv:{path}", classnames=classnames, labels=labels, paths=paths, captions=captions)
