"""The package's public surface: `dir(starft_cli)` lists the lazily imported API, each name of which resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import starft_cli

REPO = Path(__file__).resolve().parents[1]


def test_dir_shows_the_public_api() -> None:
    names = dir(starft_cli)
    assert set(starft_cli.__all__) <= set(names)
    assert {"load_model", "classify", "evaluate", "finetune", "StarftError", "__version__"} <= set(names)
    assert names == sorted(names)


def test_every_public_name_resolves() -> None:
    for name in starft_cli.__all__:
        assert getattr(starft_cli, name) is not None, name


def test_dir_does_not_import_torch() -> None:
    code = "import sys, starft_cli; dir(starft_cli); print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
