"""The shipped spurious pools and user pool files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import TemplateError
from starft_cli.prompts import fill, load_pool, pool_names

SIZES = {"background": 58, "texture": 54, "resolution": 20}


@pytest.mark.parametrize(("name", "size"), SIZES.items())
def test_shipped_pools_have_the_reference_sizes_and_one_slot_each(name: str, size: int):
    pool = load_pool(name)
    assert len(pool) == size
    assert len(set(pool)) == size
    assert all(t.count("{}") == 1 for t in pool)
    assert all(t.endswith(".") for t in pool)
    assert all(len(t.replace("{}", "").split()) >= 1 for t in pool)


def test_pool_names_and_spurious_text_shape():
    from starft_cli.train.bank import spurious_text

    assert set(SIZES) <= set(pool_names())
    assert (
        spurious_text("{} in snowy landscapes.", "a photo of a goldfish.")
        == "a photo of a goldfish in snowy landscapes."
    )
    assert spurious_text("striped {}.", "a photo of a goldfish.") == "striped a photo of a goldfish."
    assert fill(load_pool("background")[0], "x") != load_pool("background")[0]


def test_user_pool_file_drops_duplicates_with_a_warning_and_skips_blank_lines(tmp_path: Path, caplog):
    path = tmp_path / "pool.txt"
    path.write_text("{} at dawn.\n\n# a comment\n{} at dusk.\n{} at dawn.\n")
    with caplog.at_level(logging.WARNING):
        pool = load_pool(str(path))
    assert pool == ["{} at dawn.", "{} at dusk."]
    assert "duplicate" in caplog.text


@pytest.mark.parametrize("bad", ["no slot here.", "{} and {} twice.", "{} with a stray }."])
def test_user_pool_file_with_a_bad_template_is_refused(tmp_path: Path, bad: str):
    path = tmp_path / "pool.txt"
    path.write_text(f"{{}} fine.\n{bad}\n")
    with pytest.raises(TemplateError, match="line 2"):
        load_pool(str(path))


def test_finetune_refuses_a_bad_pool_file(tmp_path: Path, class_folders: Path):
    path = tmp_path / "pool.txt"
    path.write_text("no slot\n")
    result = CliRunner().invoke(
        app, ["finetune", "--backbone", "starft-tiny:none", "--data", f"folder:{class_folders}", "--pool", str(path),
              "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "exactly one slot" in result.stderr
