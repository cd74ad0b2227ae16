"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.imagegen import make_class_folders

ROOT = Path(__file__).resolve().parents[1]


def _cmd(data: Path, out: Path, *extra: str, stall_at: int | None = None) -> list[str]:
    """The finetune command; with ``stall_at``, it holds still right after writing its step-N checkpoint (a
    fault injected from outside starft, tests/robustness/inject.py), to be killed or interrupted there."""
    launcher = ["-m", "starft_cli"] if stall_at is None else ["-m", "tests.robustness.inject", "saved", str(stall_at),
                                                              "stall-after", "--"]  # fmt: skip
    return [
        sys.executable, *launcher, "finetune", "--backbone", "starft-tiny:none", "--data", f"folder:{data}",
        "--batch-size", "4", "--epochs", "2", "--warmup", "2", "--lr", "1e-4", "--workers", "2",
        "--checkpoint-every", "3", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("STARFT_DEBUG", None)
    return env


def _state_step(run: Path) -> int | None:
    path = run / "checkpoints" / "last" / "training_state.pt"
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:
        return None


@pytest.mark.parametrize(
    ("method", "kill_at", "position"),
    [
        (("--method", "starft"), 3, (3, 0, 3)),
        # LP-FT's stage boundary is step 4 of 8: killed at step 6, in the fine-tuning stage (mid-epoch 1)
        (("--method", "lp-ft"), 6, (6, 1, 2)),
        (("--method", "l2-sp", "--hp", "alpha=0.5"), 3, (3, 0, 3)),
        # method state in the checkpoint: CaRot's EMA teacher (updated every 2 steps); Lipsum-FT's per-step draws
        (("--method", "carot", "--hp", "ema_every=2"), 3, (3, 0, 3)),
        (("--method", "lipsum-ft"), 3, (3, 0, 3)),
    ],
    ids=["starft", "lp-ft-second-stage", "l2-sp", "carot", "lipsum-ft"],
)
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path: Path, method, kill_at, position):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car", "bus"], per_class=4)  # 16 images: 4 steps/epoch
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(_cmd(data, full, *method), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    # The victim stalls right after writing its step-N checkpoint (mid-epoch) and is then SIGKILLed.
    victim = subprocess.Popen(
        _cmd(data, killed, *method, stall_at=kill_at), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while _state_step(killed) != kill_at:
        assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
        assert time.monotonic() < deadline, f"the run never reached its step-{kill_at} checkpoint"
        time.sleep(0.2)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    state = torch.load(killed / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == position  # mid-epoch

    resumed = subprocess.run(
        _cmd(data, killed, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    states = [torch.load(r / "checkpoints" / "last" / "training_state.pt", weights_only=True) for r in (full, killed)]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].get("method", {}).items():  # e.g. CaRot's EMA teacher
        assert torch.equal(value, states[1]["method"][key]), key
    assert ("method" in states[0]) == (method[1] == "carot")
    files = ["open_clip_model.safetensors"]
    if method[1] not in ("starft", "carot"):
        files.append("classification_head.safetensors")
    for name in files:
        a = load_file(str(full / "checkpoints" / "last" / name))
        b = load_file(str(killed / "checkpoints" / "last" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert _state_step(full) == _state_step(killed) == 8
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # each step logged once, none lost or doubled
    full_loss = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    killed_loss = [json.loads(line)["loss"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert full_loss == killed_loss


def _default_sigint() -> None:
    """In the child: Ctrl-C acts as in a terminal, whatever the test process inherited (an ignored or blocked SIGINT
    is passed on to children across exec)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_the_resume_command_then_resume_finishes_and_says_so(tmp_path: Path):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car", "bus"], per_class=4)  # 8 steps in all
    run = tmp_path / "run"
    cmd = [*_cmd(data, run, stall_at=3)]
    cmd[cmd.index("--workers") + 1] = "0"
    victim = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    # Ctrl-C once the run holds at its step-3 checkpoint: the injection says "stalling at" on stderr when it does
    # (a fixed sleep after the state file appears raced the checkpoint's completion on a loaded machine)
    assert victim.stderr is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(victim.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(line.startswith("stalling at") for line in list(seen)):
        assert victim.poll() is None, "".join(seen)
        assert time.monotonic() < deadline, "the run never reached its step-3 checkpoint"
        time.sleep(0.1)
    assert _state_step(run) == 3
    victim.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out = victim.stdout.read() if victim.stdout else ""
    victim.wait(timeout=60)
    reader.join(timeout=60)
    err = "".join(seen)
    assert victim.returncode == 130, err
    last = err.strip().splitlines()[-1]
    resume = f"starft finetune --out {run} --resume"
    assert last == (
        f"interrupted at step 3; the last checkpoint is step 3 ({run / 'checkpoints' / 'last'}). Resume with: {resume}"
    )
    assert "Traceback" not in err and out == ""

    # The printed command, as a user would type it (python -m for the starft entry point).
    resumed = subprocess.run(
        [sys.executable, "-m", "starft_cli", *resume.split()[1:]], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    summary = resumed.stderr.strip().splitlines()[-1]
    assert summary.startswith("finished 8 of 8 steps in ") and summary.endswith(f"checkpoints in {run / 'checkpoints'}")
    assert _state_step(run) == 8

    again = subprocess.run(
        [sys.executable, "-m", "starft_cli", *resume.split()[1:]], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == f"{run} is already finished (8 of 8 steps); nothing to do"
    assert again.stdout.strip() == str(run)
