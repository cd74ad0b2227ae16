"""Crash-safe training: SIGKILL at each dangerous moment of a run, then ``--resume`` ends bitwise equal to an
uninterrupted run, with each step logged once. The kills are injected from outside (tests/robustness/inject.py)."""

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

# (point, N, mode): kill at the N-th matching call of point. Checkpoints/last is saved at steps 3, 4, 6, 8;
# validation (and a new checkpoints/best) after steps 4 and 8.
KILL_POINTS = {
    "during-step": ("optimizer-step", 6, "kill"),  # step 6: after backward, before the weights change
    "checkpoint-between-files": ("state-write", 2, "kill"),  # step 4: model file written, training state not
    "checkpoint-before-rename": ("state-rename", 2, "kill"),  # step 4: training state in its temp file
    "last-swap": ("last-swap", 2, "kill"),  # step 4: old `last` moved aside, new one not renamed in
    "validation": ("validation", 2, "kill"),  # end of epoch 1
    "best-swap": ("best-swap", 2, "kill"),  # step 8: old `best` moved aside, new one not renamed in
    "after-final-step": ("metrics", TOTAL_STEPS, "kill-after"),  # step 8 logged, its checkpoint not written
    "after-final-checkpoint": ("barrier", 1, "kill"),  # all written, the run not yet reported done
}


@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_sigkill_then_resume_is_bitwise_equal(where: str, reference: tuple[Path, Path], tmp_path: Path) -> None:
    data, full = reference
    run = tmp_path / "run"
    point, n, mode = KILL_POINTS[where]
    victim = with_fault(point, n, mode, *train_args(data, run))
    assert victim.returncode == -signal.SIGKILL, f"the kill point was not reached: {victim.stderr}"
    if where == "last-swap":  # the window the kill hit: `last` moved aside, the new one not in place
        assert not (run / "checkpoints" / "last").exists() and (run / "checkpoints" / ".last.old").is_dir()
    if where == "best-swap":
        assert not (run / "checkpoints" / "best").exists() and (run / "checkpoints" / ".best.old").is_dir()

    resumed = starft(*train_args(data, run, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    last = run / "checkpoints" / "last"
    assert state_step(last) == TOTAL_STEPS
    assert_same_weights(full / "checkpoints" / "last", last)
    assert_same_weights(full / "checkpoints" / "best", run / "checkpoints" / "best")
    assert metrics(run) == metrics(full)  # every step and validation once, none lost or doubled, same values
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert leftovers == ["best", "last"]  # no .partial / .old folders, no temporary files
    assert not (run / ".lock").exists()
    assert not [p for p in last.iterdir() if p.name.endswith(".tmp")]
