"""iWildCam and FMoW in the WILDS on-disk layout (``iwildcam_v2.0/``, ``fmow_v1.1/``), read from their CSVs."""

from __future__ import annotations

from pathlib import Path

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import asset_lines, count_into, read_csv_table
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError

IWILDCAM_FOLDER = "iwildcam_v2.0"
IWILDCAM_SPLITS = ("train", "val", "test", "id_val", "id_test")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"missing {path}")
    table = read_csv_table(path, delimiter=",")  # UTF-8 with or without a BOM; rows of the wrong width refused
    missing = [c for c in columns if c not in table.header]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}")
    if table.problems:
        raise DataError(table.problems[0])
    return table.rows


def _iwildcam_classes(root: Path, num: int) -> list[str]:
    path = root / "categories.csv"
    names = {}
    if path.is_file():
        for row in _read_csv(path, ("y", "name")):
            names[int(row["y"])] = row["name"].strip()
    return [names.get(i, f"class {i}") for i in range(num)]


@register_dataset(
    "iwildcam",
    title="iWildCam (WILDS v2.0)",
    folder=IWILDCAM_FOLDER,
    layout=f"{IWILDCAM_FOLDER}/metadata.csv (split, y, filename, location_remapped, ...), "
    f"{IWILDCAM_FOLDER}/categories.csv (y, name), {IWILDCAM_FOLDER}/train/<filename>",
    source="the WILDS package (`wilds` on PyPI, get_dataset('iwildcam', download=True)) or worksheets.codalab.org; "
    "keep the extracted iwildcam_v2.0/ folder as is",
    splits=IWILDCAM_SPLITS,
    default_split="test",
    templates="iwildcam",
)
class IWildCam(Builder):
    def _rows(self, root: Path) -> list[dict[str, str]]:
        return _read_csv(root / "metadata.csv", ("split", "y", "filename"))

    def build(self, root: Path, split: str) -> FileImageDataset:
        rows = self._rows(root)
        num = max(int(r["y"]) for r in rows) + 1
        chosen = [r for r in rows if r["split"] == split]
        return self.dataset(
            FileImageDataset,
            classnames=_iwildcam_classes(root, num),
            labels=[int(r["y"]) for r in chosen],
            paths=[root / "train" / r["filename"] for r in chosen],
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        try:
            rows = self._rows(root)
        except DataError as exc:
            report.problems.append(exc.message)
            return report
        if not rows:
            report.problems.append(f"{root / 'metadata.csv'} has no rows")
            return report
        if not (root / "categories.csv").is_file():
            report.notes.append(f"no {root / 'categories.csv'}: classes are named 'class N'")
        classes = _iwildcam_classes(root, max(int(r["y"]) for r in rows) + 1)
        for split in self.info.splits:
            chosen = [r for r in rows if r["split"] == split]
            absent = [r["filename"] for r in chosen if not (root / "train" / r["filename"]).is_file()]
            if absent:
                report.problems.append(f"{split}: {len(absent)} images are missing (e.g. {root / 'train' / absent[0]})")
            if chosen:
                count_into(report, split, [int(r["y"]) for r in chosen], classes)
        if f"{self.info.default_split} images" not in report.counts:
            report.problems.append(f"metadata.csv has no '{self.info.default_split}' rows")
        return report


FMOW_FOLDER = "fmow_v1.1"
FMOW_REGIONS = ("Asia", "Europe", "Africa", "Americas", "Oceania", "Other")
FMOW_SPLITS = ("train", "id_val", "id_test", "val", "test")


def _fmow_split(row: dict[str, str]) -> str | None:
    """WILDS' official time split: before 2013 the original train/val/test become train/id_val/id_test;
    original val images from 2013-2015 are the OOD val split, original test images from 2016 on the OOD test
    split; every other row (and the sequestered 'seq' rows) belongs to no split."""
    if row["split"] == "seq":
        return None
    year = int(row["timestamp"][:4])
    if year < 2013:
        return {"train": "train", "val": "id_val", "test": "id_test"}.get(row["split"])
    if year < 2016:
        return "val" if row["split"] == "val" else None
    return "test" if row["split"] == "test" else None


@register_dataset(
    "fmow",
    title="FMoW (WILDS v1.1, worst-region accuracy)",
    folder=FMOW_FOLDER,
    layout=f"{FMOW_FOLDER}/rgb_metadata.csv (split, category, country_code, timestamp, ...), "
    f"{FMOW_FOLDER}/country_code_mapping.csv (alpha-3, region), {FMOW_FOLDER}/images/rgb_img_<row>.png "
    "(row = 0-based row of rgb_metadata.csv). Splits as in WILDS: train/id_val/id_test before 2013, val = "
    "original val 2013-2015, test = original test from 2016; worst-region accuracy leaves out region 'Other'",
    source="the WILDS package (`wilds` on PyPI, get_dataset('fmow', download=True)) or worksheets.codalab.org; "
    "keep the extracted fmow_v1.1/ folder as is",
    splits=FMOW_SPLITS,
    default_split="test",
    templates="fmow",
)
class FMoW(Builder):
    group_names = FMOW_REGIONS

    def _rows(self, root: Path) -> list[tuple[int, dict[str, str], str]]:
        rows = _read_csv(root / "rgb_metadata.csv", ("split", "category", "country_code", "timestamp"))
        out, bad = [], []
        for index, row in enumerate(rows):
            try:
                split = _fmow_split(row)
            except ValueError:
                bad.append(f"row {index} ('{row['timestamp']}')")
                continue
            if split is not None:
                out.append((index, row, split))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise DataError(f"{root / 'rgb_metadata.csv'}: {len(bad)} bad timestamp(s): {shown}")
        return out

    def _dataset(self, root: Path, split: str) -> FileImageDataset:
        classes = list(asset_lines("fmow_classes.txt"))
        index = {c: i for i, c in enumerate(classes)}
        mapping = {
            r["alpha-3"]: r["region"] for r in _read_csv(root / "country_code_mapping.csv", ("alpha-3", "region"))
        }
        paths, labels, groups = [], [], []
        rows = self._rows(root)
        unknown = [(i, r["category"]) for i, r, _ in rows if r["category"].replace("_", " ") not in index]
        if unknown:
            shown = ", ".join(f"row {i} '{c}'" for i, c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{root / 'rgb_metadata.csv'}: {len(unknown)} row(s) with an unknown category: {shown}")
        for row_index, row, row_split in rows:
            if row_split != split:
                continue
            name = row["category"].replace("_", " ")
            region = mapping.get(row["country_code"], "Other")
            paths.append(root / "images" / f"rgb_img_{row_index}.png")
            labels.append(index[name])
            groups.append(FMOW_REGIONS.index(region) if region in FMOW_REGIONS else FMOW_REGIONS.index("Other"))
        return self.dataset(
            FileImageDataset,
            classnames=classes,
            labels=labels,
            paths=paths,
            groups=groups,
            group_names=FMOW_REGIONS,
            group_kind="region",
        )

    def build(self, root: Path, split: str) -> FileImageDataset:
        return self._dataset(root, split)

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        for split in self.info.splits:
            try:
                ds = self._dataset(root, split)
            except DataError as exc:
                report.problems.append(exc.message)  # the same metadata problem for every split is shown once
                continue
            absent = [p for p in ds.paths if not p.is_file()]
            if absent:
                report.problems.append(f"{split}: {len(absent)} images are missing (e.g. {absent[0]})")
            if ds.labels:
                count_into(report, split, ds.labels, ds.classnames)
                if split == "test":
                    present = [FMOW_REGIONS[g] for g in sorted(set(ds.groups or []))]
                    report.counts.update(
                        {f"test region {r}": (ds.groups or []).count(FMOW_REGIONS.index(r)) for r in present}
                    )
        if "test images" not in report.counts:
            report.problems.append("rgb_metadata.csv has no rows in the test split (2016 or later)")
        return report
