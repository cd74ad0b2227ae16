"""Full disk and I/O errors: a checkpoint, report or cache write that fails leaves the previous checkpoint
loadable and the run resumable, an existing results.json intact, and no partial file a later run would trust."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.models import read_state_dict
from tests.imagegen import make_class_folders
from tests.robustness.helpers import (
    TOTAL_STEPS,
    assert_same_weights,
    metrics,
    one_line_error,
    starft,
    state_step,
    train_args,
    with_fault,
)


def _no_temporary_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith((".tmp", ".partial", ".old"))]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one_and_resumes(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    point, mode, strerror = "state-write", "enospc", "No space left on device"
    data, full = reference
    run = tmp_path / "run"
    failed = with_fault(point, 2, mode, *train_args(data, run))  # the step-4 checkpoint's training state
    assert failed.returncode == 1, failed.stderr
    line = one_line_error(failed.stderr)
    assert line.startswith(f"error: {strerror}") and "--resume" in line, line
    last = run / "checkpoints" / "last"
    assert state_step(last) == 3  # the previous checkpoint, complete and loadable
    assert read_state_dict(last / "open_clip_model.safetensors")
    _no_temporary_files(run)
    assert not (run / ".lock").exists()

    resumed = starft(*train_args(data, run, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert state_step(last) == TOTAL_STEPS
    assert_same_weights(full / "checkpoints" / "last", last)
    assert metrics(run) == metrics(full)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["enospc", "eio"])
def test_failed_model_file_write_keeps_the_previous_checkpoint(
    code: int, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch
    import torch

    from starft_cli.train.checkpoint import RunDir, load_training_state, save_training_checkpoint

    run = RunDir(tmp_path / "run")

    def save(step: int) -> Path:
        return save_training_checkpoint(
            run, "last", tiny.model, tiny.model_cfg, tiny.preprocess_cfg, arch=tiny.arch, metadata={"step": step},
            state={"format": 1, "step": step, "weights": torch.ones(3)},
        )  # fmt: skip

    save(3)
    before = read_state_dict(run.checkpoint("last") / "open_clip_model.safetensors")
    original = safetensors.torch.save_file

    def failing(tensors, filename, *a, **k):  # half the file, then the device fails
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(code, os.strerror(code), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError) as info:
        save(4)
    assert info.value.errno == code
    monkeypatch.setattr(safetensors.torch, "save_file", original)
    assert load_training_state(run.find_checkpoint("last"))["step"] == 3
    after = read_state_dict(run.checkpoint("last") / "open_clip_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in (run.root / "checkpoints").iterdir()) == ["last"]  # no half folder
    _no_temporary_files(run.root)
    save(4)  # the next write succeeds
    assert load_training_state(run.find_checkpoint("last"))["step"] == 4


def test_a_save_after_an_interrupted_swap_always_leaves_a_checkpoint(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the renames of a swap leaves only `.last.old`; the next save (a resumed run under torchrun,
    where nothing is recovered first) must not delete it before the new `last` is in place."""
    import torch

    from starft_cli.train.checkpoint import RunDir, load_training_state, save_training_checkpoint

    run = RunDir(tmp_path / "run")

    def save(step: int) -> Path:
        return save_training_checkpoint(
            run, "last", tiny.model, tiny.model_cfg, tiny.preprocess_cfg, arch=tiny.arch, metadata={"step": step},
            state={"format": 1, "step": step, "weights": torch.ones(3)},
        )  # fmt: skip

    save(3)
    os.replace(run.checkpoint("last"), run.root / "checkpoints" / ".last.old")  # the crash's leftover
    original = os.replace

    def crash_on_swap(src, dst):  # the next save is cut short right before its new folder is renamed in
        if Path(src).name == ".last.partial":
            raise KeyboardInterrupt
        return original(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_swap)
    with pytest.raises(KeyboardInterrupt):
        save(4)
    monkeypatch.setattr(os, "replace", original)
    found = run.find_checkpoint("last")
    assert found is not None and load_training_state(found)["step"] == 3
    assert run.recover() == ["last"] and load_training_state(run.checkpoint("last"))["step"] == 3
    assert sorted(p.name for p in (run.root / "checkpoints").iterdir()) == ["last"]


def _failing_write_text(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    """Path.write_text of ``name``'s temporary file writes half of the text, then fails as a full disk does."""
    original = Path.write_text

    def write_text(self: Path, data: str, *args, **kwargs) -> int:
        if self.name.startswith(f".{name}."):
            original(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(code, os.strerror(code), str(self))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["enospc", "eio"])
def test_failed_results_write_leaves_the_existing_results_json_intact(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_class_folders(tmp_path / "data", ["cat", "dog"], per_class=2)
    out = tmp_path / "eval"
    args = ["eval", "-m", "starft-tiny:none", "--device", "cpu", "--workers", "0", "--data", f"folder:{data}"]
    first = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert first.exit_code == 0, first.stderr
    before = (out / "results.json").read_bytes()

    _failing_write_text(monkeypatch, "results.json", code)
    failed = CliRunner().invoke(app, [*args, "--out", str(out), "--seed", "1"])
    assert failed.exit_code == 1
    line = one_line_error(failed.stderr)
    assert line.startswith(f"error: {os.strerror(code)}: {out / 'results.json'}")  # the file, not its temporary
    assert (out / "results.json").read_bytes() == before  # intact: the half-written text never replaced it
    _no_temporary_files(out)


def _values(stdout: str) -> list[tuple]:
    import json

    return [(r["model"], r["dataset"], r["metric"], r["value"]) for r in json.loads(stdout)]


def test_failed_cache_writes_warn_leave_nothing_and_the_next_run_rebuilds(
    tmp_path: Path, starft_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    data = make_class_folders(tmp_path / "data", ["cat", "dog"], per_class=2)
    args = ["eval", "-m", "starft-tiny:none", "--device", "cpu", "--workers", "0", "--data", f"folder:{data}"]
    original = safetensors.torch.save_file

    def full_disk(tensors, filename, *a, **k):  # half a file, then the disk is full
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    failed = CliRunner().invoke(app, [*args, "--format", "json"])
    assert failed.exit_code == 0, failed.stderr  # a cache is a saving: the command still answers
    warnings = [line for line in failed.stderr.splitlines() if line.startswith("warning: could not write the")]
    assert any("feature cache" in w for w in warnings) and any("zero-shot head cache" in w for w in warnings)
    assert all("No space left on device" in w for w in warnings)
    cache = starft_home / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()], "a partial cache entry was left"

    monkeypatch.setattr(safetensors.torch, "save_file", original)
    again = CliRunner().invoke(app, [*args, "--format", "json"])
    assert again.exit_code == 0 and _values(again.stdout) == _values(failed.stdout)
    assert not [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert {p.parent.name for p in cache.rglob("*.safetensors")} == {"features", "heads"}
    cached = CliRunner().invoke(app, [*args, "--format", "json"])
    assert _values(cached.stdout) == _values(failed.stdout)


def test_a_full_disk_under_report_out_names_the_file_and_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20.1: eval/report/probe write through the atomic helpers; a full disk names the file being written
    (not its temporary twin) and leaves neither a half file nor a temporary one."""
    import json

    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"model": "m", "dataset": "d", "split": "test", "metric": "top1", "value": 0.5}]))
    board = tmp_path / "out" / "board.md"
    _failing_write_text(monkeypatch, "board.md", errno.ENOSPC)
    failed = CliRunner().invoke(app, ["report", str(results), "--format", "md", "--out", str(board)])
    assert failed.exit_code == 1
    assert one_line_error(failed.stderr).startswith(f"error: No space left on device: {board}")
    assert not board.exists()
    _no_temporary_files(board.parent)
