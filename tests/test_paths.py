"""Output files respect the umask: every writer goes through paths.atomic_path (mkstemp alone would give 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from starft_cli.paths import atomic_path, atomic_write_bytes, atomic_write_text, current_umask, file_mode


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    old = os.umask(mask)
    try:
        assert current_umask() == mask and file_mode() == expected
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        with atomic_path(tmp_path / "c.txt") as tmp:
            tmp.write_text("y")
        (tmp_path / "plain.txt").write_text("z")  # what open() gives, for comparison
    finally:
        os.umask(old)
    assert {p.name: _mode(p) for p in _all_files(tmp_path)} == dict.fromkeys(
        ("a.txt", "b.bin", "c.txt", "plain.txt"), expected
    )


def test_results_leaderboards_plots_checkpoints_and_publish_folder_are_0644(
    tmp_path: Path, tiny, umask_022: None
) -> None:
    import pandas as pd

    from starft_cli.models import save_checkpoint
    from starft_cli.reports import write_report
    from starft_cli.reports.plots import plot
    from starft_cli.train.checkpoint import RunDir, save_training_checkpoint
    from starft_cli.zoo import publish

    records = [
        {"model": "m", "dataset": "waterbirds", "split": "test", "metric": "top1", "value": 0.9},
        {"model": "m", "dataset": "waterbirds", "split": "test", "metric": "worst_group_acc", "value": 0.5},
    ]
    write_report(tmp_path / "eval", pd.DataFrame(records))
    plot(pd.DataFrame(records), tmp_path / "eval" / "plot.png")
    save_checkpoint(tiny.model, tmp_path / "model", tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    run = RunDir(tmp_path / "run")
    run.write_config('{"method": "starft"}\n')
    save_training_checkpoint(
        run, "last", tiny.model, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny", metadata={}, state={"s": 1}
    )
    pub = publish.plan(tmp_path / "model", "me/tiny")
    publish.write_folder(pub, tmp_path / "upload")
    files = _all_files(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    for expected in (
        "eval/results.json",
        "eval/leaderboard.md",
        "eval/leaderboard.csv",
        "eval/plot.png",
        "model/open_clip_model.safetensors",
        "model/open_clip_config.json",
        "run/config.json",
        "run/checkpoints/last/open_clip_model.safetensors",
        "run/checkpoints/last/training_state.pt",
        "upload/README.md",
        "upload/open_clip_model.safetensors",
    ):
        assert expected in names
    assert {p.relative_to(tmp_path).as_posix(): oct(_mode(p)) for p in files} == {n: oct(0o644) for n in names}
