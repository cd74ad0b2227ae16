from __future__ import annotations

import os
from pathlib import Path

from starft_cli.threads import apply_thread_policy

# The CLI's CPU thread policy for the test process too, before anything imports torch (tests that run
# `starft` in-process would otherwise measure torch's spinning defaults on a busy machine).
apply_thread_policy()

import pytest  # noqa: E402

from tests.imagegen import make_class_folders, make_image  # noqa: E402

# Tests never write to the user's caches and never reach the network unless a test says so.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def starft_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STARFT_HOME (caches, config) for every test."""
    home = tmp_path_factory.mktemp("starft_home")
    monkeypatch.setenv("STARFT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny():
    """The tiny architecture, random weights (seed 0): a LoadedModel."""
    from starft_cli.models import load

    return load("starft-tiny:none")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three small generated images."""
    return [make_image(tmp_path / "imgs" / f"{i}.jpg", seed=i, color=(40 * i, 100, 200 - 40 * i)) for i in range(3)]


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """A class-per-folder dataset: 3 classes x 4 images."""
    return make_class_folders(tmp_path / "folders", ["cat", "dog", "car"], per_class=4)
