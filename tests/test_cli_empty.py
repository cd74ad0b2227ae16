"""An empty value never means "the current folder": every command refuses it before doing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["finetune", "--out", "", "--backbone", "starft-tiny:none"], "error: --out is empty."),
        (["finetune", "--out=", "--backbone", "starft-tiny:none"], "error: --out is empty."),
        (["eval", "-m", "", "--data", "folder:x"], "error: -m is empty."),
        (["eval", "--data", "", "-m", "starft-tiny:none"], "error: --data is empty."),
        (["wise", "--out", ""], "error: --out is empty."),
        (["classify", "", "--labels", "cat,dog"], "error: an empty argument after 'classify'."),
        (["zoo", "info", ""], "error: an empty argument after 'zoo info'."),
        (["data", "check", "folder:x", "--data-root", ""], "error: --data-root is empty."),
        (["finetune", "--config", ""], "error: --config is empty."),
    ],
)
def test_empty_values_are_refused(args: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert list(tmp_path.iterdir()) == []  # nothing was written into the current folder
