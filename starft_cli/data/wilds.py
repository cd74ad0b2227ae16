"""iWildCam and FMoW in the WILDS on-disk layout (``iwildcam_v2.0/``, ``fmow_v1.1/``), read from their CSVs.

Class names come from the default protocol (:mod:`starft_cli.data.protocols`): iWildCam's are the lower-cased English
names the StarFT code (like WiSE-FT and FLYP) prompts with, by WILDS label ``y``; FMoW's are the WILDS category
names, underscores kept, as those codes prompt with them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import count_into
from starft_cli.data.protocols import attach_protocol, require_protocol
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError

IWILDCAM_FOLDER = "iwildcam_v2.0"
IWILDCAM_SPLITS = ("train", "val", "test", "id_val", "id_test")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"missing {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(missing)}")
        return list(reader)


def _iwildcam_classes(num: int) -> list[str]:
    """The default protocol's names of labels ``0 .. num-1`` (WILDS numbers 182 classes, ``max(y) + 1``)."""
    return require_protocol("iwildcam").names_for(num)


@register_dataset(
    "iwildcam",
    title="iWildCam (WILDS v2.0)",
    folder=IWILDCAM_FOLDER,
    layout=f"{IWILDCAM_FOLDER}/metadata.csv (split, y, filename, location_remapped, ...), "
    f"{IWILDCAM_FOLDER}/train/<filename>; 182 classes as WILDS numbers them (y), named by the protocol",
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
        entry = require_protocol("iwildcam")
        names = _iwildcam_classes(num)
        ds = self.dataset(
            FileImageDataset,
            classnames=names,
            labels=[int(r["y"]) for r in chosen],
            paths=[root / "train" / r["filename"] for r in chosen],
            duplicate_classnames_ok=entry.check_collisions(names),  # only the pairs the source names alike
        )
        return attach_protocol(ds, entry, list(range(num)))

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
        try:
            classes = _iwildcam_classes(max(int(r["y"]) for r in rows) + 1)
            require_protocol("iwildcam").check_collisions(classes)
        except DataError as exc:
            report.problems.append(exc.message)
            return report
        shared = require_protocol("iwildcam").shared_note()
        if shared:
            report.notes.append(shared)
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
FMOW_NO_REGION = "(no region)"  # countries the mapping lists with an empty region: WILDS' NaN region, which counts
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


def _fmow_regions(mapping: dict[str, str]) -> tuple[str, ...]:
    """The regions of the country mapping: WILDS' five and 'Other' first (stable indices), then any other region
    it names, sorted, an empty one as :data:`FMOW_NO_REGION`. WILDS makes each distinct value of the mapping a region
    (pandas reads an empty cell as NaN, a value of its own) and leaves only 'Other' out of worst-region accuracy."""
    extra = sorted({r for r in mapping.values() if r not in FMOW_REGIONS})
    return FMOW_REGIONS + tuple(extra)


@register_dataset(
    "fmow",
    title="FMoW (WILDS v1.1, worst-region accuracy)",
    folder=FMOW_FOLDER,
    layout=f"{FMOW_FOLDER}/rgb_metadata.csv (split, category, country_code, timestamp, ...), "
    f"{FMOW_FOLDER}/country_code_mapping.csv (alpha-3, region), {FMOW_FOLDER}/images/rgb_img_<row>.png "
    "(row = 0-based row of rgb_metadata.csv). Splits as in WILDS: train/id_val/id_test before 2013, val = "
    "original val 2013-2015, test = original test from 2016. Regions as in WILDS: a country missing from the "
    f"mapping is 'Other' (left out of worst-region accuracy); one listed with an empty region is '{FMOW_NO_REGION}', "
    "a region of its own that counts, as is any other region the mapping names",
    source="the WILDS package (`wilds` on PyPI, get_dataset('fmow', download=True)) or worksheets.codalab.org; "
    "keep the extracted fmow_v1.1/ folder as is",
    splits=FMOW_SPLITS,
    default_split="test",
    templates="fmow",
)
class FMoW(Builder):
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
        entry = require_protocol("fmow")
        categories = list(entry.keys or ())  # WILDS' 62 category names, in WILDS' label order
        classes = entry.names_for(len(categories))
        index = {c: i for i, c in enumerate(categories)}
        mapping = {
            r["alpha-3"]: r["region"].strip() or FMOW_NO_REGION
            for r in _read_csv(root / "country_code_mapping.csv", ("alpha-3", "region"))
        }
        regions = _fmow_regions(mapping)
        paths, labels, groups = [], [], []
        rows = self._rows(root)
        unknown = [(i, r["category"]) for i, r, _ in rows if r["category"] not in index]
        if unknown:
            shown = ", ".join(f"row {i} '{c}'" for i, c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{root / 'rgb_metadata.csv'}: {len(unknown)} row(s) with an unknown category: {shown}")
        for row_index, row, row_split in rows:
            if row_split != split:
                continue
            region = mapping.get(row["country_code"], "Other")  # not in the mapping: 'Other', as in WILDS
            paths.append(root / "images" / f"rgb_img_{row_index}.png")
            labels.append(index[row["category"]])
            groups.append(regions.index(region))
        ds = self.dataset(
            FileImageDataset,
            classnames=classes,
            labels=labels,
            paths=paths,
            groups=groups,
            group_names=regions,
            group_kind="region",
        )
        return attach_protocol(ds, entry, list(range(len(classes))))

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
                    names, groups = ds.group_names or [], ds.groups or []
                    report.counts.update({f"test region {names[g]}": groups.count(g) for g in sorted(set(groups))})
        if "test images" not in report.counts:
            report.problems.append("rgb_metadata.csv has no rows in the test split (2016 or later)")
        return report
