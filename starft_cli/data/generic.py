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
GROUP_COLUMNS = ("group",)
GROUPS_FILE = "groups.csv"


class DataProblems(DataError):
    """Several problems of one data file, all reported at once (``problems``; the message joins them)."""

    def __init__(self, problems: list[str], *, param: str | None = None) -> None:
        super().__init__("; ".join(problems) if len(problems) > 1 else problems[0], param=param)
        self.problems = list(problems)


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
    underscores as spaces, unless a ``classnames.txt`` (one per line, in sorted-folder order) is given or present.
    A ``root/groups.csv`` (filepath relative to ``root``, group) gives each image a group (worst-group accuracy).
    Folders whose names collapse into one class name raise :class:`~starft_cli.errors.DataError`."""
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
        files = image_files_under(folder)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"no images under {base}", "Each class folder should hold image files")
    grouped = read_groups_file(root, paths)
    return FileImageDataset(
        name=f"folder:{root}",
        classnames=classnames,
        labels=labels,
        paths=paths,
        groups=None if grouped is None else grouped[0],
        group_names=None if grouped is None else grouped[1],
    )


def image_files_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by path (``os.walk``: much cheaper than ``Path.rglob``)."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found.extend(os.path.join(dirpath, f) for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in found)  # the same order as sorting rglob's paths


def _pick(header: list[str], options: tuple[str, ...], what: str, path: Path, optional: bool = False) -> str | None:
    lowered = {h.lower(): h for h in header}
    for option in options:
        if option in lowered:
            return lowered[option]
    if optional:
        return None
    raise DataError(f"{path} has no {what} column", f"Name it one of: {', '.join(options)}")


def load_csv(path: Path, classnames_file: str | Path | None = None) -> FileImageDataset:
    """A CSV/TSV with a header: file path (relative to the CSV), optional caption, label, optional group.

    Labels are integers (class names then come from ``--classnames`` or a ``classnames.txt`` beside the
    CSV: line N+1 names label N) or class names: sorted to make the class list, or, when a class names file is
    given or present, in the file's order (it must then list exactly the labels used; DataError otherwise).
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
    caption_col = _pick(header, CAPTION_COLUMNS, "caption", path, optional=True)
    label_col = _pick(header, LABEL_COLUMNS, "label", path)
    problems: list[str] = []  # every problem of the file, reported together
    raw_labels = [(row[label_col] or "").strip() for row in rows]
    no_label = [number for number, v in enumerate(raw_labels, start=2) if not v]
    if no_label:
        problems.append(f"{path}: {len(no_label)} row(s) without a label (e.g. line {no_label[0]})")
    names_file = Path(classnames_file) if classnames_file else path.parent / CLASSNAMES_FILE
    has_names = bool(classnames_file) or names_file.is_file()
    classnames: list[str] = []
    labels: list[int] = []
    if all(v.lstrip("-").isdigit() for v in raw_labels if v):
        if not has_names:
            problems.append(
                f"{path} has integer labels but no class names. Pass `classnames_file`, "
                f"or put {names_file} beside the CSV (one name per line: line 1 names label 0)"
            )
        else:
            classnames = read_classnames(names_file)
            labels = [int(v) if v else -1 for v in raw_labels]
            bad = sorted({y for v, y in zip(raw_labels, labels, strict=True) if v and not 0 <= y < len(classnames)})
            if bad:
                shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
                problems.append(
                    f"{path}: label(s) {shown} outside 0..{len(classnames) - 1} "
                    f"({names_file} has {len(classnames)} names)"
                )
    elif has_names:  # string labels and a class names file: the file gives the class order; it must match exactly
        classnames = read_classnames(names_file)
        present = {v for v in raw_labels if v}
        unknown = sorted(present - set(classnames))
        unused = [c for c in classnames if c not in present]
        if unknown or unused:
            parts = []
            if unknown:
                parts.append(f"label(s) not in {names_file}: {', '.join(unknown)}")
            if unused:
                parts.append(f"name(s) in {names_file} that no row uses: {', '.join(unused)}")
            problems.append(
                f"{path}: the class names do not match the labels ({'; '.join(parts)}). With string labels a class "
                "names file sets the class order and must list each label exactly once; drop it to use the sorted "
                "labels"
            )
        index = {name: i for i, name in enumerate(classnames)}
        labels = [index.get(v, -1) for v in raw_labels]
    else:
        classnames = sorted({v for v in raw_labels if v})
        index = {name: i for i, name in enumerate(classnames)}
        labels = [index.get(v, -1) for v in raw_labels]
    paths = []
    no_path = []
    for number, row in enumerate(rows, start=2):
        value = (row[path_col] or "").strip()
        if not value:
            no_path.append(number)
        file = Path(value).expanduser()
        paths.append(file if file.is_absolute() else path.parent / file)
    if no_path:
        problems.append(f"{path}: {len(no_path)} row(s) with an empty file path (e.g. line {no_path[0]})")
    captions = [(row[caption_col] or "").strip() for row in rows] if caption_col else None
    if captions is not None and any(not c for c in captions):
        empty = [number for number, c in enumerate(captions, start=2) if not c]
        problems.append(
            f"{path}: {len(empty)} row(s) with an empty caption (e.g. line {empty[0]}). Fill every caption, or drop "
            "the caption column"
        )
    group_col = _pick(header, GROUP_COLUMNS, "group", path, optional=True)
    groups, group_names = None, None
    if group_col is not None:
        values = [(row[group_col] or "").strip() for row in rows]
        empty = [number for number, v in enumerate(values, start=2) if not v]
        if empty:
            problems.append(
                f"{path}: {len(empty)} row(s) with an empty group (e.g. line {empty[0]}). Give every row a group, "
                "or drop the group column"
            )
        else:
            groups, group_names = _group_indices(values)
    if problems:
        raise DataProblems(problems, param="classnames_file")
    return FileImageDataset(
        name=f"csv:{path}",
        classnames=classnames,
        labels=labels,
        paths=paths,
        captions=captions,
        groups=groups,
        group_names=group_names,
    )


def _group_indices(values: list[str]) -> tuple[list[int], list[str]]:
    """Group names = the distinct values, sorted; each value's index among them."""
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return [index[v] for v in values], names


def read_groups_file(root: Path, paths: list[Path]) -> tuple[list[int], list[str]] | None:
    """``root/groups.csv`` (columns ``filepath``, relative to ``root``, and ``group``) for ``folder:`` data: each
    image's group index and the group names (the distinct values, sorted). None when there is no such file.
    Rows for files outside ``paths`` (another split) are ignored; every image of ``paths`` needs a row."""
    file = root / GROUPS_FILE
    if not file.is_file():
        return None
    rows = list(csv.DictReader(file.read_text(encoding="utf-8").splitlines()))
    header = list(rows[0].keys()) if rows else []
    path_col = _pick(header, PATH_COLUMNS, "file path", file)
    group_col = _pick(header, GROUP_COLUMNS, "group", file)
    assert path_col is not None and group_col is not None
    by_path: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        rel, group = (row[path_col] or "").strip(), (row[group_col] or "").strip()
        if not rel or not group:
            raise DataError(f"{file}, line {number}: empty file path or group")
        by_path[os.path.normpath(root / rel)] = group
    values = [by_path.get(os.path.normpath(p)) for p in paths]
    absent = [p for p, v in zip(paths, values, strict=True) if v is None]
    if absent:
        raise DataError(
            f"{file} gives no group for {len(absent)} of {len(paths)} image(s) (e.g. {absent[0]})",
            "List every image (filepath relative to the folder, group)",
        )
    return _group_indices([v for v in values if v is not None])
