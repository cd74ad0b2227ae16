"""Two processes that need the same cached build: the second waits for the first and uses its result."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_HOLD = """
import sys, time
from pathlib import Path
from starft_cli.paths import build_lock
with build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_build_lock_makes_the_second_process_wait(tmp_path: Path) -> None:
    from starft_cli.paths import build_lock

    target = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    waited: list[Path] = []
    start = time.monotonic()
    with build_lock(target, on_wait=waited.append):
        took = time.monotonic() - start
    holder.wait(timeout=60)
    assert waited == [target]
    assert took > 0.5  # it really waited for the holder's release
    with build_lock(target, on_wait=waited.append):  # free now: no wait
        pass
    assert waited == [target]


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path: Path) -> None:
    from starft_cli.paths import build_lock

    target = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=60)
    with build_lock(target, on_wait=lambda p: (_ for _ in ()).throw(AssertionError("waited on a dead holder"))):
        pass


_BUILD = """
from starft_cli.demo import ensure_zero_shot
print(ensure_zero_shot(quick=True, device="cpu"), flush=True)
"""


def test_two_cold_demo_builds_at_once_both_get_the_model(tmp_path: Path) -> None:
    env = {**os.environ, "STARFT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1
    from starft_cli import demo

    assert demo.verify_zero_shot(Path(folders.pop())) is None
    assert not any("in use" in err for _, err in outs)
