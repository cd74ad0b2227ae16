"""Your own data: ``folder:PATH`` (one folder per class) and ``csv:PATH`` (filepath, caption, label)."""

from __future__ import annotations

import os
from pathlib import Path

from starft_cli.data.base import FileImageDataset
from starft_cli.errors import DataError, SplitError

CLASSNAMES_FILE = "classnames.txt"
PATH_COLUMNS = ("filepath", "path", "image", "file")
CAPTION_COLUMNS = ("caption", "title", "text")
LABEL_COLUMNS = ("label", "y", "class", "target")
GROUP_COLUMNS = ("group",)
GROUPS_FILE = "groups.csv"


SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")  # folder names read as splits
DEFAULT_SPLIT = "test"  # the split of folder:/csv: data when none is given


class DataProblems(DataError):
    """Several problems of one data file, all reported at once (``problems``; the message joins them)."""

    def __init__(self, problems: list[str], *, param: str | None = None) -> None:
        super().__init__("; ".join(problems) if len(problems) > 1 else problems[0], param=param)
        self.problems = list(problems)


def alike_names(names: list[str], where: str, positions: list[str] | None = None) -> str | None:
    """The one check of user-given class names (folder names, class names files, CSV labels, classify's labels):
    None when no two read alike (:func:`~starft_cli.data.base.name_key`: case, spacing and underscores aside),
    else a message naming the pairs (five at most), e.g. ``data.csv: labels 'sea lion' (line 3) and 'sea_lion'
    (line 2) read as one class name``.
    ``positions`` (one per name, e.g. ``line 3``) are shown beside the names."""
    from starft_cli.data.base import classname_collisions

    pairs = classname_collisions(names)
    if not pairs:
        return None

    def shown(i: int) -> str:
        return f"'{names[i]}'" + (f" ({positions[i]})" if positions else "")

    listed = "; ".join(
        f"{shown(a)} twice" if names[a] == names[b] and not positions else f"{shown(a)} and {shown(b)}"
        for a, b in pairs[:5]
    )
    more = f"; and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    return f"{where} {listed}{more} read as one class name (case, spacing and underscores aside)"


def read_classnames(path: str | Path) -> list[str]:
    """One class name per line (blank lines ignored), UTF-8 (a byte-order mark is dropped).

    Raises:
        DataError: unreadable or not UTF-8, no names, or two names that read alike (:func:`alike_names`).
    """
    from starft_cli.data.checks import read_text

    path = Path(path)
    lines = read_text(path).splitlines()
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    names = [name for _, name in numbered]
    if not names:
        raise DataError(f"{path} holds no class names", "Put one class name per line")
    from starft_cli.data.base import classname_collisions

    collisions = classname_collisions(names)
    if collisions:
        a, b = collisions[0]
        same = (
            "twice"
            if names[a] == names[b]
            else f"as '{names[a]}' and '{names[b]}' (alike but for case, spacing or underscores)"
        )
        raise DataError(
            f"{path} lists the class name '{names[a]}' {same} (lines {numbered[a][0]} and {numbered[b][0]})",
            "Each line must be a distinct class name",
        )
    return names


def split_folders(root: Path) -> list[str]:
    """The split folders of ``root`` when it is laid out ``root/<split>/<class>/<images>``: every sub-folder is
    named as a split (:data:`SPLIT_FOLDERS`) and holds class folders, no images of its own. Empty for a
    one-folder-per-class ``root`` (a class named ``train`` among others stays a class).

    Raises:
        DataError: split folders beside other folders (the layout is ambiguous).
    """
    from starft_cli.data.checks import image_files, subfolders

    folders = subfolders(root)
    splits = [p for p in folders if p.name in SPLIT_FOLDERS and subfolders(p) and not image_files(p)]
    if not splits:
        return []
    others = [p.name for p in folders if p not in splits]
    if others:
        raise DataError(
            f"{root} mixes split folders ({', '.join(p.name for p in splits)}) with other folders "
            f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''})",
            "Lay it out as PATH/<class>/<images> or as PATH/<split>/<class>/<images>, not both",
        )
    return [p.name for p in splits]


def folder_split(root: Path, split: str | None) -> tuple[Path, str]:
    """THE rule for split folders of ``folder:PATH`` data, used by every command (training, evaluation,
    validation, the probe, ``data check``): the folder of the class folders and the split's name.

    ``PATH/<split>/<class>/`` (:func:`split_folders`): the folder of ``split`` (default ``test``). ``PATH/<class>/``:
    ``PATH`` itself, as split ``train`` or ``test`` (default ``test``).

    Raises:
        SplitError: the split asked for (or the default) has no folder; another split of a one-folder-per-class
            ``PATH``.
    """
    splits = split_folders(root)
    chosen = split or DEFAULT_SPLIT
    if splits:
        if chosen not in splits:
            raise SplitError(
                f"{root} has no '{chosen}' split folder (it has {', '.join(splits)})",
                f"Pass one of them as the split{'' if split else ' (the default is test)'}",
            )
        return root / chosen, chosen
    if chosen not in ("train", DEFAULT_SPLIT):
        raise SplitError(
            f"{root} has no '{chosen}' split folder: it is one folder per class, read as split train or test",
            "Lay it out as PATH/<split>/<class>/ to have other splits, or drop the split",
        )
    return root, chosen


def load_folder(root: Path, split: str | None = None, classnames_file: str | Path | None = None) -> FileImageDataset:
    """``root/<class>/*.jpg`` or ``root/<split>/<class>/*.jpg`` (:func:`folder_split` picks the folder; the
    dataset's ``split`` says which); class names are the folder names with underscores as spaces, unless a
    ``classnames.txt`` (one per line, in sorted-folder order) is given or present in ``root``. Images anywhere under
    a class folder count, through symlinked folders too; macOS ``._*`` files are skipped (``left_out`` counts
    them). A ``root/groups.csv`` (filepath relative to ``root``, group) gives each image a group.

    Raises:
        DataError: no such folder, no class folders, no images, folders whose names collapse into one class name,
            a class names file that does not match; :class:`SplitError` as :func:`folder_split`.
    """
    from starft_cli.data.checks import subfolders
    from starft_cli.images import ImageListing

    if not root.is_dir():
        raise DataError(f"no such folder: {root}", "folder:PATH takes a folder with one sub-folder per class")
    base, split = folder_split(root, split)
    listing = ImageListing()
    folders = subfolders(base, listing)
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
    labels: list[int] = []
    for label, folder in enumerate(folders):
        labels.extend([label] * len(listing.add(folder)))
    if not listing.paths:
        raise DataError(f"no images under {base}", "Each class folder should hold image files")
    grouped = read_groups_file(root, listing.paths)
    ds = FileImageDataset(
        name=f"folder:{root}",
        classnames=classnames,
        labels=labels,
        paths=listing.paths,
        groups=None if grouped is None else grouped[0],
        group_names=None if grouped is None else grouped[1],
    )
    ds.split = split
    ds.left_out = listing.notes()
    return ds


def image_files_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by path (:class:`~starft_cli.images.ImageListing`: symlinked
    folders followed once, macOS ``._*`` files skipped)."""
    from starft_cli.images import ImageListing

    return ImageListing().add(folder)


def load_csv(path: Path, classnames_file: str | Path | None = None) -> FileImageDataset:
    """A CSV/TSV with a header: file path (relative to the CSV), optional caption, label, optional group.

    Labels are integers (class names then come from ``--classnames`` or a ``classnames.txt`` beside the
    CSV: line N+1 names label N) or class names: sorted to make the class list, or, when a class names file is
    given or present, in the file's order (it must then list exactly the labels used). UTF-8, with or without a
    byte-order mark.

    Raises:
        DataError (:class:`DataProblems` listing every problem of the file): no such file, not UTF-8, no rows, a
            missing column, rows with more or fewer fields than the header, empty values, labels outside the class
            names, string labels that read alike (``sea_lion`` and ``sea lion``).
    """
    from starft_cli.data.checks import read_csv_table

    if not path.is_file():
        raise DataError(f"no such file: {path}", "csv:PATH takes a CSV or TSV file with a header row")
    table = read_csv_table(path)
    problems: list[str] = list(table.problems)  # every problem of the file, reported together
    if not table.rows:
        raise DataProblems([*problems, f"{path} has no rows"])
    path_col = table.column(PATH_COLUMNS, "file path")
    caption_col = table.optional_column(CAPTION_COLUMNS)
    label_col = table.column(LABEL_COLUMNS, "label")
    rows, lines = table.rows, table.lines
    raw_labels = [row[label_col].strip() for row in rows]
    no_label = [number for number, v in zip(lines, raw_labels, strict=True) if not v]
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
        first_line = {}
        for number, v in zip(lines, raw_labels, strict=True):
            first_line.setdefault(v, number)
        alike = alike_names(classnames, f"{path}: labels", [f"line {first_line[c]}" for c in classnames])
        if alike:
            problems.append(f"{alike}. Spell each class one way")
        index = {name: i for i, name in enumerate(classnames)}
        labels = [index.get(v, -1) for v in raw_labels]
    paths = []
    no_path = []
    for number, row in zip(lines, rows, strict=True):
        value = row[path_col].strip()
        if not value:
            no_path.append(number)
        file = Path(value).expanduser()
        paths.append(file if file.is_absolute() else path.parent / file)
    if no_path:
        problems.append(f"{path}: {len(no_path)} row(s) with an empty file path (e.g. line {no_path[0]})")
    captions = [row[caption_col].strip() for row in rows] if caption_col else None
    if captions is not None and any(not c for c in captions):
        empty = [number for number, c in zip(lines, captions, strict=True) if not c]
        problems.append(
            f"{path}: {len(empty)} row(s) with an empty caption (e.g. line {empty[0]}). Fill every caption, or drop "
            "the caption column"
        )
    group_col = table.optional_column(GROUP_COLUMNS)
    groups, group_names = None, None
    if group_col is not None:
        values = [row[group_col].strip() for row in rows]
        empty = [number for number, v in zip(lines, values, strict=True) if not v]
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
    from starft_cli.data.checks import read_csv_table

    file = root / GROUPS_FILE
    if not file.is_file():
        return None
    table = read_csv_table(file)
    if table.problems:
        raise DataProblems(table.problems)
    path_col = table.column(PATH_COLUMNS, "file path")
    group_col = table.column(GROUP_COLUMNS, "group")
    by_path: dict[str, str] = {}
    for number, row in zip(table.lines, table.rows, strict=True):
        rel, group = row[path_col].strip(), row[group_col].strip()
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
