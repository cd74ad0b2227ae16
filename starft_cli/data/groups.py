"""Group-shift benchmarks: Waterbirds (label x place) and PACS (domain x class)."""

from __future__ import annotations

from pathlib import Path

from starft_cli.data.base import CheckReport, FileImageDataset
from starft_cli.data.checks import count_groups, count_into, image_files, read_csv_table
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError
from starft_cli.images import ImageListing

WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"
WATERBIRDS_CLASSES = ("landbird", "waterbird")
WATERBIRDS_PLACES = ("land", "water")
WATERBIRDS_SPLITS = {"train": "0", "val": "1", "test": "2"}
WATERBIRDS_COLUMNS = ("img_filename", "y", "split", "place")


def _waterbirds_rows(root: Path, problems: list[str]) -> list[dict[str, str]]:
    meta = root / "metadata.csv"
    if not meta.is_file():
        problems.append(f"missing {meta}")
        return []
    try:
        table = read_csv_table(meta, delimiter=",")
    except DataError as exc:
        problems.append(exc.one_line())
        return []
    missing = [c for c in WATERBIRDS_COLUMNS if c not in table.header]
    if missing:
        problems.append(f"{meta} lacks the column(s) {', '.join(missing)}")
        return []
    problems.extend(table.problems)
    good, bad = [], []
    for number, row in zip(table.lines, table.rows, strict=True):
        wrong = [
            f"{column}={row[column]!r}"
            for column, allowed in (("y", ("0", "1")), ("place", ("0", "1")), ("split", ("0", "1", "2")))
            if row[column] not in allowed
        ]
        if wrong:
            bad.append(f"line {number} ({', '.join(wrong)})")
        else:
            good.append(row)
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        problems.append(f"{meta}: {len(bad)} row(s) with bad values (y and place must be 0/1, split 0/1/2): {shown}")
    return good  # the checks go on with the good rows, so that every problem shows in one run


@register_dataset(
    "waterbirds",
    title="Waterbirds (CUB birds on Places backgrounds)",
    folder=WATERBIRDS_FOLDER,
    layout=f"{WATERBIRDS_FOLDER}/metadata.csv (img_id,img_filename,y,split,place,place_filename; y: 0 landbird "
    "1 waterbird; place: 0 land 1 water; split: 0 train 1 val 2 test) and the images at img_filename",
    source="github.com/kohpangwei/group_DRO (waterbird_complete95_forest2water2.tar.gz, linked from its README); "
    "extract it under the data root",
    splits=("train", "val", "test"),
    default_split="test",
    templates="waterbirds",
)
class Waterbirds(Builder):
    group_names = tuple(f"{c} on {p}" for c in WATERBIRDS_CLASSES for p in WATERBIRDS_PLACES)

    def build(self, root: Path, split: str) -> FileImageDataset:
        rows = [r for r in _waterbirds_rows(root, []) if r["split"] == WATERBIRDS_SPLITS[split]]
        labels = [int(r["y"]) for r in rows]
        return self.dataset(
            FileImageDataset,
            classnames=WATERBIRDS_CLASSES,
            labels=labels,
            paths=[root / r["img_filename"] for r in rows],
            groups=[2 * int(r["y"]) + int(r["place"]) for r in rows],
            group_names=self.group_names,
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        rows = _waterbirds_rows(root, report.problems)
        if not rows:
            if not report.problems:
                report.problems.append(f"{root / 'metadata.csv'} has no rows")
            return report  # nothing listed: nothing else to check
        absent = [r["img_filename"] for r in rows if not (root / r["img_filename"]).is_file()]
        if absent:
            report.problems.append(f"{len(absent)} images listed in metadata.csv are missing (e.g. {root / absent[0]})")
        for split in self.info.splits:
            code = WATERBIRDS_SPLITS[split]
            chosen = [r for r in rows if r["split"] == code]
            if not chosen:
                report.problems.append(f"metadata.csv has no {split} rows (split={code})")
                continue
            count_into(report, split, [int(r["y"]) for r in chosen], WATERBIRDS_CLASSES)
            if split == self.info.default_split:
                count_groups(report, split, [2 * int(r["y"]) + int(r["place"]) for r in chosen], self.group_names)
        return report


PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


@register_dataset(
    "pacs",
    title="PACS (photo, art painting, cartoon, sketch)",
    folder="PACS",
    layout="PACS/<domain>/<class>/*.jpg with domains art_painting, cartoon, photo, sketch and classes dog, "
    "elephant, giraffe, guitar, horse, house, person (the DomainBed layout)",
    source="the PACS authors' release (domaingeneralization.github.io), or DomainBed's download script; "
    "huggingface.co/datasets/flwrlabs/pacs holds a copy. Lay it out as PACS/<domain>/<class>/",
    splits=("test",),
    default_split="test",
    templates="pacs",
)
class PACS(Builder):
    group_names = tuple(f"{d}/{c}" for d in PACS_DOMAINS for c in PACS_CLASSES)

    def _scan(
        self, root: Path, problems: list[str], listing: ImageListing | None = None
    ) -> tuple[list[Path], list[int], list[int]]:
        paths: list[Path] = []
        labels: list[int] = []
        groups: list[int] = []
        if not root.is_dir():
            problems.append(f"missing folder {root}")
            return paths, labels, groups
        extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in PACS_DOMAINS)
        if extra:
            problems.append(f"{root} has unexpected domain folder(s) {', '.join(extra)} (expected {PACS_DOMAINS})")
        for d, domain in enumerate(PACS_DOMAINS):
            if not (root / domain).is_dir():
                problems.append(f"missing domain folder {root / domain}")
                continue
            unknown = sorted(p.name for p in (root / domain).iterdir() if p.is_dir() and p.name not in PACS_CLASSES)
            if unknown:
                problems.append(f"{root / domain} has unexpected class folder(s) {', '.join(unknown)}")
            for c, name in enumerate(PACS_CLASSES):
                folder = root / domain / name
                if not folder.is_dir():
                    problems.append(f"missing class folder {folder}")
                    continue
                files = image_files(folder, listing)
                paths.extend(files)
                labels.extend([c] * len(files))
                groups.extend([d * len(PACS_CLASSES) + c] * len(files))
        return paths, labels, groups

    def build(self, root: Path, split: str) -> FileImageDataset:
        listing = ImageListing()
        paths, labels, groups = self._scan(root, [], listing)
        return self.dataset(
            FileImageDataset,
            listing,
            classnames=PACS_CLASSES,
            labels=labels,
            paths=paths,
            groups=groups,
            group_names=self.group_names,
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        listing = ImageListing()
        paths, labels, groups = self._scan(root, report.problems, listing)
        report.notes.extend(listing.notes())
        if paths:
            split = self.info.default_split  # the one split: every image
            count_into(report, split, labels, PACS_CLASSES)
            count_groups(report, split, groups, self.group_names)
        return report
