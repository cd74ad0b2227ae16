"""Suite definitions and user suite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from starft_cli.errors import ConfigError
from starft_cli.eval.suites import BUILTIN_SUITES, get_suite, suite_names


def test_builtin_suites_name_registered_datasets_and_known_metrics():
    from starft_cli.data.registry import list_datasets

    assert suite_names() == ["domain-shift", "group-shift", "zero-shot", "transfer", "all"]
    for suite in BUILTIN_SUITES.values():
        for entry in suite.entries:
            assert entry.dataset in list_datasets()


def test_all_merges_each_dataset_once_with_the_union_of_metrics():
    entries = {(e.dataset, e.split): e for e in get_suite("all").entries}
    assert len(entries) == len(get_suite("all").entries)
    assert entries[("imagenet", "val")].metrics == ("top1", "top5", "ece")
    assert entries[("caltech101", None)].metrics == ("top1", "top5", "ece", "mean_per_class_recall")
    assert {d for d, _ in entries} == {e.dataset for s in BUILTIN_SUITES.values() for e in s.entries}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\n", "has no [[datasets]]"),
        ("[[datasets]]\nmetrics = ['top1']\n", "has no name"),
        ("[[datasets]]\nname = 'pacs'\nmetric = ['top1']\n", "unknown key(s) metric"),
        ("[[datasets]]\nname = 'pacs'\nmetrics = 'top1'\n", "must be a list"),
        ("[[datasets]]\nname = 'pacs'\nmetrics = ['top2']\n", "unknown metric 'top2'"),
        ("[[datasets]\n", "cannot read suite file"),
    ],
)
def test_bad_suite_files(text: str, message: str, tmp_path: Path):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        get_suite(str(path))


def test_missing_suite_file_and_unknown_name(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such suite file"):
        get_suite(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as info:
        get_suite("zero-shots")
    assert "Did you mean zero-shot" in info.value.one_line()
