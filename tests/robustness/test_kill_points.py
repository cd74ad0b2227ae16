"""Crash-safe training: one run SIGKILLed at each dangerous moment in turn (each ``--resume`` is killed at the
next point), then resumed to the end: bitwise equal to an uninterrupted run, each step logged once. The kills are
injected from outside the product (tests/robustness/inject.py patches a function to SIGKILL its own process)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.robustness.helpers import (
    TOTAL_STEPS,
    assert_same_weights,
    metrics,
    starft,
    state_step,
    train_args,
    with_fault,
)

pytestmark = pytest.mark.slow

# checkpoints/last is saved after steps 3, 4, 6 and 8; validation (and a better checkpoints/best) after 4 and 8.
# (name, point, N, mode, step of checkpoints/last left behind, what else the kill left)
CHAIN = [
    ("during-step", "optimizer-step", 2, "kill", None, "step 2: after backward, before the weights change"),
    ("checkpoint-between-files", "state-write", 2, "kill", 3, "step 4: model file written, training state not"),
    ("checkpoint-before-rename", "state-rename", 1, "kill", 3, "step 4: training state in its temporary file"),
    ("last-swap", "last-swap", 1, "kill", 3, "step 4: `last` moved aside, the new one not renamed in"),
    ("validation", "validation", 1, "kill", 3, "end of epoch 0, during validation"),
    ("best-swap", "best-swap", 1, "kill", 3, "step 4: `best` moved aside, the new one not renamed in"),
    ("after-final-step", "metrics", TOTAL_STEPS, "kill-after", 6, "step 8 logged, its checkpoint not written"),
    ("after-final-checkpoint", "barrier", 1, "kill", TOTAL_STEPS, "all written, the run not yet reported done"),
]


def test_sigkill_at_every_point_then_resume_is_bitwise_equal(reference: tuple[Path, Path], tmp_path: Path) -> None:
    data, full = reference
    run = tmp_path / "run"
    last, checkpoints = run / "checkpoints" / "last", run / "checkpoints"
    for i, (name, point, n, mode, left, _what) in enumerate(CHAIN):
        victim = with_fault(point, n, mode, *train_args(data, run, *(["--resume"] if i else [])))
        assert victim.returncode == -signal.SIGKILL, f"{name}: the kill point was not reached: {victim.stderr}"
        assert "Traceback" not in victim.stderr
        if name == "last-swap":  # the window the kill hit: no `last`, the previous one aside
            assert not last.exists() and (checkpoints / ".last.old").is_dir()
            left_in = checkpoints / ".last.old"
        elif name == "best-swap":
            assert not (checkpoints / "best").exists() and (checkpoints / ".best.old").is_dir()
            left_in = last
        else:
            left_in = last
        if left is None:
            assert not last.exists(), name
        else:
            assert state_step(left_in) == left, name  # the previous checkpoint, complete

    resumed = starft(*train_args(data, run, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.strip().endswith(f"already finished ({TOTAL_STEPS} of {TOTAL_STEPS} steps); nothing to do")
    assert state_step(last) == TOTAL_STEPS
    assert_same_weights(full / "checkpoints" / "last", last)
    assert_same_weights(full / "checkpoints" / "best", checkpoints / "best")
    assert metrics(run) == metrics(full)  # every step and validation once, none lost or doubled, same values
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last"]  # no .partial/.old folder left
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / ".lock").exists()
