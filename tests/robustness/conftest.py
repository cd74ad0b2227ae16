from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagegen import make_class_folders
from tests.robustness.helpers import metrics, starft, train_args


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The dataset of the training runs and an uninterrupted run of it (train_args): the runs a fault
    interrupted must end equal to it."""
    root = tmp_path_factory.mktemp("reference")
    data = make_class_folders(root / "data", ["cat", "dog", "car", "bus"], per_class=4)
    run = root / "full"
    done = starft(*train_args(data, run))
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in metrics(run) if "val_accuracy" in r] == [4, 8]
    assert (run / "checkpoints" / "best").is_dir()
    return data, run
