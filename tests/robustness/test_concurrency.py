"""Concurrency: two starft processes sharing one cache both succeed and leave it consistent; two fine-tunings
on one --out do not interleave (the second is refused naming the first's PID and host; a dead one's lock is
taken over)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from starft_cli.errors import RunInUseError
from starft_cli.train.checkpoint import LOCK_NAME, run_lock
from tests.hubserver import hub  # noqa: F401  (fixture)
from tests.imagegen import make_class_folders
from tests.robustness.helpers import ROOT, env, inject_cmd, one_line_error
from tests.test_zoo_hub import served  # noqa: F401  (fixture: a tiny model on the emulated Hub, in a zoo manifest)
from tests.zoo_helpers import tiny_checkpoint  # noqa: F401  (fixture)


def _popen(cmd: list[str], home: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env(STARFT_HOME=str(home)), stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )


def _starft(*args: str) -> list[str]:
    return [sys.executable, "-m", "starft_cli", *args]


def _cache_files(home: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (home / "cache" / kind).iterdir())


@pytest.mark.slow
def test_two_evals_building_the_same_head_and_feature_cache_both_succeed(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    home = tmp_path / "home"
    args = ["eval", "-m", "starft-tiny:none", "--device", "cpu", "--workers", "0", "--data", f"folder:{data}"]
    procs = [_popen(_starft(*args, "--format", "json"), home, tmp_path / f"{i}.log") for i in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"{i}.log").read_text()
    values = [[(r["metric"], r["value"]) for r in json.loads(out)] for out in outs]
    assert values[0] == values[1]
    features = _cache_files(home, "features")  # one entry, whole: no temporary file, no second copy
    assert len(features) == 2 and {Path(f).suffix for f in features} == {".json", ".safetensors"}
    assert len(_cache_files(home, "heads")) == 1
    from safetensors.torch import load_file

    stored = load_file(str(next((home / "cache" / "features").glob("*.safetensors"))))["features"]
    assert stored.shape[0] == 12 and bool(stored.isfinite().all())  # whole, readable: what a third run reads


@pytest.mark.slow
def test_finetune_on_a_busy_out_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", ["cat", "dog"], per_class=4)
    home = tmp_path / "home"
    out1, out2 = tmp_path / "run1", tmp_path / "run2"

    def args(out: Path, *extra: str) -> list[str]:
        return ["finetune", "--backbone", "starft-tiny:none", "--data", f"folder:{data}", "--batch-size", "4",
                "--epochs", "1", "--workers", "0", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip

    # A holds run1 (stalled in its first step, after building the spurious bank); B builds the same bank at once.
    first = _popen(inject_cmd("optimizer-step", 1, "stall", *args(out1)), home, tmp_path / "a.log")
    second = _popen(_starft(*args(out2)), home, tmp_path / "b.log")
    deadline = time.monotonic() + 180
    while "stalling" not in (tmp_path / "a.log").read_text():
        assert first.poll() is None, (tmp_path / "a.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (out1 / LOCK_NAME).read_text().strip() == f"{first.pid}@{socket.gethostname()}"

    refused = subprocess.run(_starft(*args(out1)), cwd=ROOT, env=env(STARFT_HOME=str(home)), capture_output=True,
                             text=True, timeout=180)  # fmt: skip
    assert refused.returncode == 1
    line = one_line_error(refused.stderr)
    assert f"pid {first.pid} on {socket.gethostname()}" in line and str(out1) in line
    assert second.wait(timeout=180) == 0, (tmp_path / "b.log").read_text()
    assert not (out2 / LOCK_NAME).exists()
    assert len(_cache_files(home, "spurious_bank")) == 1  # one whole entry, written by both

    first.send_signal(signal.SIGKILL)  # its lock stays behind, naming a dead process
    first.wait(timeout=30)
    assert (out1 / LOCK_NAME).exists()
    resumed = subprocess.run(_starft(*args(out1, "--resume")), cwd=ROOT, env=env(STARFT_HOME=str(home)),
                             capture_output=True, text=True, timeout=180)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over the lock of process {first.pid}, which is no longer running" in resumed.stderr
    assert not (out1 / LOCK_NAME).exists()


def test_run_lock_refuses_a_live_owner_and_cleans_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "runs" / "r"
    with run_lock(root) as lock:
        assert lock.read_text().strip().endswith(f"@{socket.gethostname()}")
        with pytest.raises(RunInUseError, match=r"in use by another starft run \(pid \d+ on "), run_lock(root):
            pass
    assert not (tmp_path / "runs").exists()  # made by the lock, empty: removed again
    root.mkdir(parents=True)
    (root / LOCK_NAME).write_text(f"1@{'another-host'}\n")
    with pytest.raises(RunInUseError, match="pid 1 on another-host"), run_lock(root):
        pass  # another host's process cannot be checked: refused, never taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / LOCK_NAME).write_text(f"{dead.stdout.strip()}@{socket.gethostname()}\n")
    with run_lock(root):
        pass
    assert "taking over the lock" in caplog.text
    assert not (root / LOCK_NAME).exists() and root.is_dir()


@pytest.mark.slow
def test_two_processes_downloading_the_same_zoo_model_both_succeed(served, tmp_path: Path) -> None:  # noqa: F811
    """Both `starft zoo download` of one model at once (the emulated Hub) get the verified file; one copy."""
    home = Path(os.environ["STARFT_HOME"])
    procs = [_popen(_starft("zoo", "download", "tiny-zoo"), home, tmp_path / f"{i}.log") for i in range(2)]
    outs = [p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"{i}.log").read_text()
    assert outs[0] == outs[1]
    assert Path(outs[0]).read_bytes() == served.weights
    blobs = [p for p in (served.cache).rglob("*") if p.is_file() and "blobs" in p.parts]
    assert len(blobs) == 1 and not [p for p in served.cache.rglob("*.incomplete")]
    check = subprocess.run(_starft("zoo", "verify", "tiny-zoo"), cwd=ROOT, env=env(STARFT_HOME=str(home)),
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    assert check.returncode == 0, check.stderr
