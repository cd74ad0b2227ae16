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


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``text`` appears in ``log`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {log.read_text()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_two_evals_writing_one_out_keep_both_runs_records(tmp_path: Path) -> None:
    """Issue 19.12: eval A has read --out's results.json (empty) and is about to rename its merge into place when
    eval B of another dataset starts on the same --out. B waits for A (saying so), then merges into what A
    wrote: the results hold both runs' records (without the lock, B's write dropped A's records)."""
    home, out, resume = tmp_path / "home", tmp_path / "out", tmp_path / "resume"
    data = [make_class_folders(tmp_path / f"d{i}", ["cat", "dog"], per_class=2, size=(32, 32)) for i in range(2)]

    def args(folder: Path) -> list[str]:
        return ["eval", "-m", "starft-tiny:none", "--device", "cpu", "--workers", "0", "--data", f"folder:{folder}",
                "--out", str(out)]  # fmt: skip

    environment = env(STARFT_HOME=str(home), STARFT_INJECT_RESUME=str(resume))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    first = subprocess.Popen(inject_cmd("rename:results.json", 1, "pause", *args(data[0])), cwd=ROOT,
                             env=environment, stdout=subprocess.PIPE, stderr=logs[0].open("w"), text=True)  # fmt: skip
    _wait_for_line(logs[0], "pausing at", first)
    second = _popen(_starft(*args(data[1])), home, logs[1])
    _wait_for_line(logs[1], f"waiting for another starft process to finish writing {out}", second)
    resume.touch()
    for proc, log in zip((first, second), logs, strict=True):
        proc.communicate(timeout=180)
        assert proc.returncode == 0, log.read_text()
        assert "wrote " in log.read_text()
    records = json.loads((out / "results.json").read_text())
    assert sorted({r["dataset"] for r in records}) == [f"folder:{d}" for d in data]
    assert len(records) == 4  # top1 and ece of each (top5 needs 5 classes)
    board = (out / "leaderboard.md").read_text()
    assert all(f"folder:{d} top1" in board for d in data)  # the leaderboards are the merged ones too


@pytest.mark.slow
def test_two_reports_to_one_out_file_do_not_both_write(tmp_path: Path) -> None:
    """`report --out` checks that the file is absent and writes it under the folder lock: of two reports started
    together, the second finds the first's file and is refused (both used to print "wrote")."""
    results = []
    for i, value in enumerate((0.5, 0.75)):
        path = tmp_path / f"r{i}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps([{"model": f"m{i}", "dataset": "d", "split": "test", "metric": "top1",
                                     "value": value}]))  # fmt: skip
        results.append(path)
    board, resume = tmp_path / "board.md", tmp_path / "resume"
    environment = env(STARFT_INJECT_RESUME=str(resume))
    log = tmp_path / "a.log"
    command = inject_cmd("rename:board.md", 1, "pause", "report", str(results[0]), "--out", str(board))
    first = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=log.open("w"))
    _wait_for_line(log, "pausing at", first)
    second = _popen(_starft("report", str(results[1]), "--out", str(board)), tmp_path / "home", tmp_path / "b.log")
    _wait_for_line(tmp_path / "b.log", f"waiting for another starft process to finish writing {tmp_path}", second)
    resume.touch()
    first.communicate(timeout=120)
    second.communicate(timeout=120)
    assert first.returncode == 0, log.read_text()
    assert second.returncode == 2
    assert one_line_error((tmp_path / "b.log").read_text()).startswith(f"error: {board} exists")
    assert board.read_text().splitlines()[2].split() == ["m0", "50.00"]  # the first report's, whole


def test_folder_lock_is_reentrant_and_gives_up_on_a_holder_that_does_not_finish(tmp_path: Path) -> None:
    from starft_cli.errors import OutputInUseError
    from starft_cli.locks import folder_lock

    out = tmp_path / "out"
    with folder_lock(out), folder_lock(out):  # demo holds it around write_report, which takes it again
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from starft_cli.locks import folder_lock\n"
         f"with folder_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError) as caught, folder_lock(out, wait_s=0.3):
            pass
        assert caught.value.one_line() == (
            f"{out} is still being written by another starft process after 0.3 s. Wait for it to finish, or choose "
            "another `out`"
        )
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with folder_lock(out):  # the kernel released the killed holder's lock: nothing stale is left
        pass
    assert list(out.iterdir()) == []  # and no lock file either
