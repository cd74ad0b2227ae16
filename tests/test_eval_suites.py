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


def test_a_dataset_listed_twice_is_refused_naming_it(tmp_path: Path):
    """Issue 20.14: a suite file listing one dataset (and split) twice; another split of it is fine."""
    path = tmp_path / "suite.toml"
    entry = "[[datasets]]\nname = 'pacs'\nmetrics = ['{}']\n"
    path.write_text(entry.format("top1") + "split = 'val'\n" + entry.format("top1") + entry.format("ece"))
    with pytest.raises(ConfigError) as info:
        get_suite(str(path))
    assert info.value.one_line() == (
        f"{path}: dataset pacs is listed twice (#2 and #3). List each dataset once, with all its metrics in one "
        "[[datasets]] table; a second split needs its own `split`"
    )
    path.write_text(entry.format("top1") + "split = 'val'\n" + entry.format("ece"))
    assert [(e.dataset, e.split) for e in get_suite(str(path)).entries] == [("pacs", "val"), ("pacs", None)]


def test_a_dataset_given_twice_on_the_command_line_is_a_one_line_error(tmp_path: Path):
    from typer.testing import CliRunner

    from starft_cli.cli.app import app

    args = ["eval", "-m", "starft-tiny:none", "--data", f"folder:{tmp_path}", "--data", f"folder:{tmp_path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: suite 'custom' lists dataset folder:{tmp_path} twice. List each dataset (and split) once, with all "
        "its metrics\n"
    )
