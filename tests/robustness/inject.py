"""Run ``starft`` with one fault injected from outside the product code (the test harness of tests/robustness).

Usage::

    python -m tests.robustness.inject POINT N MODE -- starft arguments...

The function named by ``POINT`` is wrapped so that its ``N``-th matching call does ``MODE`` instead of running:
``kill`` (SIGKILL this process), ``enospc`` / ``eio`` (raise that OSError, as a full disk or a failing device
would), ``stall`` (sleep until killed or interrupted, to hold the run open), ``pause`` (wait until the file
``$STARFT_INJECT_RESUME`` exists, then make the call); ``MODE-after`` runs the call first.
Nothing in starft knows about this: the patches are plain monkeypatching before ``starft_cli.cli.app.main`` runs.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fault(mode: str, what: str) -> None:
    if mode.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if mode in ("enospc", "eio"):
        code = errno.ENOSPC if mode == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), what)
    if mode == "pause":  # hold (the call not made yet) until the file named by $STARFT_INJECT_RESUME exists
        print(f"pausing at {what}", file=sys.stderr, flush=True)
        resume = Path(os.environ["STARFT_INJECT_RESUME"])
        while not resume.exists():
            time.sleep(0.05)
        return
    if mode == "stall":
        print(f"stalling at {what}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
    raise SystemExit(f"unknown fault mode {mode}")


def _on_nth(fn: Callable[..., Any], n: int, mode: str, match: Callable[..., bool], what: str) -> Callable[..., Any]:
    count = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        if match(*args, **kwargs):
            count += 1
            if count == n:
                if mode.endswith("-after"):  # run the call, then the fault
                    result = fn(*args, **kwargs)
                    _fault(mode[: -len("-after")], what)
                    return result
                paths = [str(a) for a in args if isinstance(a, str | os.PathLike) and os.sep in str(a)]
                _fault(mode, paths[-1] if paths else what)  # an OSError names the file, as a real one does
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _named(*names: str) -> Callable[..., bool]:
    """Match os.replace(src, dst) calls whose destination file name is one of ``names``."""
    return lambda src, dst, *a, **k: Path(dst).name in names


def _any(*args: Any, **kwargs: Any) -> bool:
    return True


def install(point: str, n: int, mode: str) -> None:
    """Patch the function behind ``point`` (see the table below)."""
    import torch

    import starft_cli.train.checkpoint as checkpoint
    import starft_cli.train.distributed as distributed
    import starft_cli.train.validate as validate

    def patch(owner: Any, attr: str, match: Callable[..., bool] = _any, nth: int = n) -> None:
        setattr(owner, attr, _on_nth(getattr(owner, attr), nth, mode, match, point))

    if point == "optimizer-step":  # mid-step: after forward and backward, before the weights change
        patch(torch.optim.AdamW, "step")
    elif point == "state-write":  # the model file of the checkpoint is written, the training state not yet
        patch(torch, "save")
    elif point == "state-rename":  # the training state is written to its temporary file, not renamed yet
        patch(os, "replace", _named("training_state.pt"))
    elif point == "last-swap":  # checkpoints/last was moved aside, the new one not yet renamed in
        patch(os, "replace", _named("last"))
    elif point == "best-swap":  # the same for checkpoints/best
        patch(os, "replace", _named("best"))
    elif point == "validation":  # end-of-epoch validation
        patch(validate, "validation_metrics")
    elif point == "metrics":  # the training-step line of step N (with kill-after: right after it is written)
        patch(checkpoint.RunDir, "append_metrics", lambda self, record: "loss" in record and record["step"] == n, 1)
    elif point == "saved":  # checkpoints/last of step N is written (e.g. stall-after: hold the run there)
        from starft_cli.train import loop

        patch(loop._Trainer, "_save", lambda self, name, step, *a, **k: name == "last" and step == n, 1)
    elif point.startswith("rename:"):  # the file NAME of rename:NAME is written to its temporary file, not renamed
        patch(os, "replace", _named(point[len("rename:") :]))
    elif point == "barrier":  # after the last step and its checkpoint, before the run reports done
        patch(distributed, "barrier")
    else:
        raise SystemExit(f"unknown fault point {point}")


def main(argv: list[str]) -> None:
    point, n, mode, sep, *rest = argv
    assert sep == "--", "usage: inject POINT N MODE -- starft arguments"
    install(point, int(n), mode)
    from starft_cli.cli.app import main as starft_main

    sys.argv = ["starft", *rest]
    starft_main()


if __name__ == "__main__":
    main(sys.argv[1:])
