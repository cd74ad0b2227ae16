"""A diverging run stops at the first non-finite step, never writes or selects non-finite weights, and every
loader refuses NaN weights (issue 9, item 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import NonFiniteWeightsError
from starft_cli.models import WEIGHTS_NAME, check_finite_weights, load, read_state_dict, save_checkpoint

runner = CliRunner()
FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "1", "--device", "cpu"]


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {name}: not strict JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _diverge(run: Path, data: Path, *extra: str):
    args = ["finetune", *FAST, "--lr", "1e4", "--data", f"folder:{data}", "--batch-size", "4", "--epochs", "4"]
    return runner.invoke(app, [*args, "--checkpoint-every", "1", "--out", str(run), *extra])


def test_huge_lr_stops_at_the_first_non_finite_step(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    result = _diverge(run, class_folders)
    assert result.exit_code == 1, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    records = _strict_lines(run / "metrics.jsonl")
    bad = records[-1]
    assert bad["skipped"].startswith("non-finite") and bad["bad_steps"] == 1
    assert f"training diverged at step {bad['step']}:" in error[0]
    assert "--max-bad-steps" in error[0] and "--lr" in error[0]
    assert all("skipped" not in r for r in records[:-1])  # stopped at the first one
    last = run / "checkpoints" / "last"
    if last.exists():  # the last good checkpoint: finite, loadable, resumable
        state = torch.load(last / "training_state.pt", weights_only=True)
        assert state["step"] == bad["step"] - 1
        assert f"checkpoints/last (step {state['step']}) is the last good state" in error[0]
        check_finite_weights(read_state_dict(last / WEIGHTS_NAME), "last")
        load(str(last))
        again = _diverge(run, class_folders, "--resume")
        assert again.exit_code == 1 and f"training diverged at step {bad['step']}:" in again.stderr
        # what the hint offers: resume, skipping such steps
        skipping = _diverge(run, class_folders, "--resume", "--max-bad-steps", "100")
        assert skipping.exit_code == 0, skipping.output
        assert "non-finite step(s) skipped" in skipping.stderr.strip().splitlines()[-1]


def test_max_bad_steps_skips_counts_and_logs(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    result = _diverge(run, class_folders, "--max-bad-steps", "100")
    records = [r for r in _strict_lines(run / "metrics.jsonl") if "loss" in r]
    skipped = [r for r in records if "skipped" in r]
    assert result.exit_code == 0, result.output
    assert skipped and [r["bad_steps"] for r in skipped] == list(range(1, len(skipped) + 1))
    assert "was skipped (1 of --max-bad-steps 100)" in result.stderr
    assert len(records) == 12  # every step is logged, skipped ones included
    last = run / "checkpoints" / "last"
    check_finite_weights(read_state_dict(last / WEIGHTS_NAME), "last")  # skipped steps never touched the weights
    assert torch.load(last / "training_state.pt", weights_only=True)["bad_steps"] == len(skipped)

    run2 = tmp_path / "run2"
    result = _diverge(run2, class_folders, "--max-bad-steps", "2")
    assert result.exit_code == 1
    assert "after 2 skipped step(s)" in result.stderr


def test_metrics_are_strict_json(tmp_path: Path):
    from starft_cli.train.checkpoint import RunDir

    run = RunDir(tmp_path / "run")
    run.append_metrics({"step": 1, "loss": float("nan"), "reg": float("inf"), "lr": 1e-5, "x": [float("-inf")]})
    assert _strict_lines(run.metrics) == [{"step": 1, "loss": None, "reg": None, "lr": 1e-5, "x": [None]}]


def test_nan_validation_accuracy_never_selects_best(tmp_path: Path, class_folders: Path, monkeypatch):
    import starft_cli.train.validate as validate

    monkeypatch.setattr(validate, "validation_metrics", lambda *a, **k: {"top1": float("nan")})
    run = tmp_path / "run"
    args = ["finetune", *FAST, "--lr", "1e-4", "--data", f"folder:{class_folders}", "--batch-size", "6"]
    result = runner.invoke(app, [*args, "--epochs", "1", "--val-data", f"folder:{class_folders}", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert not (run / "checkpoints" / "best").exists()
    assert [r["val_accuracy"] for r in _strict_lines(run / "metrics.jsonl") if "val_accuracy" in r] == [None]


def test_a_non_finite_checkpoint_is_never_written(tmp_path: Path, tiny):
    from starft_cli.train.checkpoint import NonFiniteWeights, RunDir, save_training_checkpoint

    model = load("starft-tiny:none").model
    with torch.no_grad():
        model.visual.proj.fill_(float("inf"))
    with pytest.raises(NonFiniteWeights, match=r"visual\.proj"):
        save_training_checkpoint(
            RunDir(tmp_path / "run"), "last", model, tiny.model_cfg, tiny.preprocess_cfg, arch=None, metadata={},
            state={"step": 1},
        )  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_fp16_inf_gradients_are_left_to_the_grad_scaler():
    """Under fp16 an inf gradient is the scaler's business (it skips the step itself); fp32 stops on it."""
    from starft_cli.train.config import TrainConfig
    from starft_cli.train.distributed import DistEnv
    from starft_cli.train.loop import _Trainer

    towers = torch.nn.Linear(2, 2)
    towers.weight.grad = torch.full((2, 2), float("inf"))
    trainer = object.__new__(_Trainer)
    trainer.towers, trainer.env = towers, DistEnv()
    trainer.cfg = TrainConfig(data="x", precision="fp16")
    assert trainer._nonfinite(torch.tensor(1.0)) is None
    assert trainer._nonfinite(torch.tensor(math.nan)) == "loss"
    trainer.cfg = TrainConfig(data="x", precision="fp32")
    assert trainer._nonfinite(torch.tensor(1.0)) == "gradient"
    towers.weight.grad = torch.zeros(2, 2)
    assert trainer._nonfinite(torch.tensor(1.0)) is None


@pytest.fixture
def nan_folder(tmp_path: Path, tiny) -> Path:
    model = load("starft-tiny:none").model
    with torch.no_grad():
        model.visual.proj[0, 0] = float("nan")
    folder = tmp_path / "nanmodel"
    save_checkpoint(model, folder, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    return folder


def test_every_loader_refuses_nan_weights(nan_folder: Path, tmp_path: Path, tiny):
    weights = nan_folder / WEIGHTS_NAME
    for ref, arch in ((str(nan_folder), None), (str(weights), None), (str(weights), "starft-tiny")):
        with pytest.raises(NonFiniteWeightsError, match=f"weights in {weights} are not finite: 1 of .* visual.proj"):
            load(ref, arch=arch)
    pt = tmp_path / "nan.pt"
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    state["logit_scale"] = torch.tensor(float("inf"))
    torch.save(state, pt)
    with pytest.raises(NonFiniteWeightsError, match=r"nan\.pt are not finite.*logit_scale"):
        load(str(pt), arch="starft-tiny")


def test_wise_refuses_nan_weights(tiny):
    from starft_cli.wise import wise

    good = tiny.model.state_dict()
    bad = {k: v.clone() for k, v in good.items()}
    bad["visual.proj"][0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="the fine-tuned model are not finite"):
        wise(good, bad, 0.5)


@pytest.mark.parametrize("command", ["classify", "eval"])
def test_classify_and_eval_refuse_a_nan_model(nan_folder: Path, class_folders: Path, images, command: str):
    if command == "classify":
        args = ["classify", "-m", str(nan_folder), "--labels", "a,b", "--device", "cpu", str(images[0])]
    else:
        args = ["eval", "-m", str(nan_folder), "--data", f"folder:{class_folders}", "--metric", "top1"]
        args += ["--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: weights in ") and "are not finite" in result.stderr
    assert "Traceback" not in result.output and "nan" not in result.stdout


def test_publish_refuses_a_nan_checkpoint(nan_folder: Path, tmp_path: Path):
    out = tmp_path / "upload"
    result = runner.invoke(app, ["zoo", "publish", str(nan_folder), "--repo", "me/nan", "--dry-run", "--out", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: weights in ") and "are not finite" in result.stderr
    assert not out.exists()


def test_divergence_before_any_checkpoint_says_a_resume_restarts_at_step_0(tmp_path: Path, class_folders: Path):
    """Issue 20 item 11: with no checkpoint written, the hint says what `--resume --max-bad-steps` really does."""
    run = tmp_path / "run"
    result = _diverge(run, class_folders, "--checkpoint-every", "0")  # checkpoints at epoch ends only (3 steps)
    assert result.exit_code == 1, result.output
    assert not (run / "checkpoints" / "last").exists()
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "No checkpoint was written. Lower --lr (now 10000) in a new run (another --out), or restart this one " in (
        error
    )
    resume = f"starft finetune --out {run} --resume --max-bad-steps N"
    assert error.endswith(f"from step 0 skipping such steps with `{resume}`")
    again = _diverge(run, class_folders, "--checkpoint-every", "0", "--resume", "--max-bad-steps", "100")
    assert again.exit_code == 0, again.output  # what the hint offers works
    assert torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)["step"] == 12
