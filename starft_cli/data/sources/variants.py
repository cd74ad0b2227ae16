"""Datasets that exist only as a Hub copy, because the copy follows a protocol of its own.

``caltech101-vtab``: VTAB's Caltech101 (the copy CLIP_benchmark evaluates as ``wds/vtab/caltech101``) has its own
class list (102 classes, background included, with VTAB's names) and its own train/test split (about 3k/6k images),
unlike ``caltech101`` (our folder layout of the original archive with its own split rule). It is registered here,
under its own name, so that one protocol is never substituted for the other.
"""

from __future__ import annotations

from pathlib import Path

from starft_cli.data.base import CheckReport
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.data.sources import hub  # registers the Hub copies as a source of the registered datasets


@register_dataset(
    "caltech101-vtab",
    title="Caltech101 as in VTAB (its class list and split; Hub copy only)",
    folder="caltech101-vtab",
    layout="no folder layout: read from the Hub copy in the Hugging Face cache",
    source="huggingface.co/datasets/clip-benchmark/wds_vtab-caltech101; `starft data download caltech101-vtab`",
    splits=("test", "train"),
    default_split="test",
    templates="imagenet80",
)
class Caltech101Vtab(Builder):
    hub_only = True

    def build(self, root: Path, split: str) -> object:
        from starft_cli.errors import DataError

        ds = hub.cached_dataset(self.info.name, split)
        if ds is None:
            raise DataError(f"{self.info.name} is not downloaded", f"Run `starft data download {self.info.name}`")
        return ds

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        report.problems.append(f"{self.info.name} has no folder layout; run `starft data download {self.info.name}`")
        return report
