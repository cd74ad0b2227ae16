"""TensorBoard after a resume shows each step once, as metrics.jsonl does (issue 20 item 10)."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.train import loop

runner = CliRunner()


def _steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))  # purge_orphaned_data=True: what TensorBoard shows
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_a_resume_purges_the_steps_after_the_checkpoint(tmp_path: Path, class_folders: Path, monkeypatch):
    args = ["finetune", "--backbone", "starft-tiny:none", "--workers", "0", "--device", "cpu", "--warmup", "1"]
    args += ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "2", "--tensorboard"]
    args += ["--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    original = loop._Trainer._log

    def interrupt_after_step_5(self, record, bad, plan):
        original(self, record, bad, plan)
        if record["step"] == 5:
            self.tb.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(loop._Trainer, "_log", interrupt_after_step_5)
    assert runner.invoke(app, args).exit_code == 130
    state = torch.load(tmp_path / "run" / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and _steps(tmp_path / "run") == [1, 2, 3, 4, 5]
    monkeypatch.setattr(loop._Trainer, "_log", original)
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]  # step 5 once (redone after the checkpoint of step 4)
