"""Class names that collapse into one (item 6 of issue 9): after every normalisation and after tokenisation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import DataError
from tests.imagegen import make_class_folders, make_image

runner = CliRunner()
TINY = ["--model", "starft-tiny:none", "--device", "cpu"]


def test_folders_that_become_one_class_name_are_refused(tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset

    root = make_class_folders(tmp_path / "f", ["sea_lion", "sea lion", "seal"], per_class=2)
    with pytest.raises(DataError, match=r"class folders 'sea lion' and 'sea_lion' .* become one class name"):
        load_dataset(f"folder:{root}")
    check = runner.invoke(app, ["data", "check", f"folder:{root}"])
    assert check.exit_code == 1
    assert "problem: class folders 'sea lion' and 'sea_lion'" in check.stdout
    ev = runner.invoke(app, ["eval", "--data", f"folder:{root}", "-m", "starft-tiny:none", "--workers", "0"])
    assert ev.exit_code == 1 and "become one class name" in ev.stderr


def test_folders_differing_in_case_are_refused_and_a_classnames_file_resolves_it(tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset

    root = make_class_folders(tmp_path / "f", ["Cat", "cat"], per_class=1)
    with pytest.raises(DataError, match="'Cat' and 'cat'"):
        load_dataset(f"folder:{root}")
    (root / "classnames.txt").write_text("house cat\nwild cat\n")
    assert load_dataset(f"folder:{root}").classnames == ["house cat", "wild cat"]
    (root / "classnames.txt").write_text("wild cat\nWild  Cat\n")
    with pytest.raises(DataError, match=r"'wild cat' as 'wild cat' and 'Wild  Cat' .*lines 1 and 2"):
        load_dataset(f"folder:{root}")


def test_csv_labels_that_read_alike_are_refused(tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset

    for i in range(2):
        make_image(tmp_path / f"{i}.jpg", i)
    (tmp_path / "data.csv").write_text("filepath,label\n0.jpg,Dog\n1.jpg,dog\n")
    with pytest.raises(DataError, match="named 'Dog' and 'dog'"):
        load_dataset(f"csv:{tmp_path / 'data.csv'}")


def test_prompts_identical_after_tokenisation_are_refused_naming_both(tiny) -> None:
    from starft_cli.zeroshot import check_prompts

    with pytest.raises(DataError, match=r"class names 'Cat' and 'cat' give identical prompts"):
        check_prompts(tiny.tokenizer, ["Cat", "dog", "cat"], ["a photo of a {}"])
    check_prompts(tiny.tokenizer, ["cat", "dog"], ["a photo of a {}.", "a {}."])  # distinct: no error


def test_same_name_twice_in_a_benchmark_list_is_a_warning(tiny, caplog: pytest.LogCaptureFixture) -> None:
    from starft_cli.zeroshot import check_prompts

    with caplog.at_level(logging.WARNING):
        check_prompts(tiny.tokenizer, ["missile", "dog", "missile"], ["a photo of a {}."])
    assert "classes 0 and 2 are both named 'missile'" in caplog.text


def test_classify_refuses_labels_that_differ_only_past_the_context_length(images: list[Path]) -> None:
    stem = " ".join(["very"] * 40) + " long label"  # the tiny text tower reads 32 tokens
    result = runner.invoke(app, ["classify", str(images[0]), "--labels", f"{stem} one,{stem} two", *TINY])
    assert result.exit_code == 1, result.output
    assert f"class names '{stem} one' and '{stem} two' give identical prompts" in result.stderr
    assert "reads only 32 tokens" in result.stderr
    assert "warning:" in result.stderr and "are truncated" in result.stderr


def test_a_truncated_prompt_is_a_warning(images: list[Path]) -> None:
    long = " ".join(["enormous"] * 40) + " cat"
    result = runner.invoke(app, ["classify", str(images[0]), "--labels", f"{long},dog", "--templates", "single", *TINY])
    assert result.exit_code == 0, result.output
    assert "1 of 2 prompts are longer than the text tower's context length (32 tokens)" in result.stderr


def test_shipped_class_lists_are_distinct_except_imagenets_published_duplicates() -> None:
    from starft_cli.data.base import classname_collisions
    from starft_cli.data.imagenet import imagenet_classes
    from starft_cli.data.protocols import PROTOCOLS, get_protocol, protocol_datasets

    names = imagenet_classes()[1]
    assert sorted(names[a] for a, _ in classname_collisions(names)) == ["missile", "sunglasses"]
    for protocol in PROTOCOLS:
        for dataset in protocol_datasets(protocol):
            entry = get_protocol(dataset, protocol)
            # only the pairs the source itself names alike (iWildCam's English names), and those declared
            assert classname_collisions(list(entry.classnames or ())) == list(entry.shared_prompts), dataset


def test_a_prompt_that_exactly_fills_the_context_is_not_called_truncated(tiny, caplog) -> None:
    from starft_cli.zeroshot import check_prompts

    fits = " ".join(["cat"] * 25)  # 'a photo of a' + 25 x 'cat' + '.' + start/end tokens = 32 tokens
    assert tiny.tokenizer([f"a photo of a {fits}."])[0, -1] != 0
    with caplog.at_level(logging.WARNING):
        check_prompts(tiny.tokenizer, [fits, "dog"], ["a photo of a {}."])
    assert "truncated" not in caplog.text
    with caplog.at_level(logging.WARNING):
        check_prompts(tiny.tokenizer, [fits + " cat", "dog"], ["a photo of a {}."])
    assert "1 of 2 prompts are longer than the text tower's context length (32 tokens)" in caplog.text
