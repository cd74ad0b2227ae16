"""The CPU thread policy: what it decides, from which cores, and that the CLI applies it before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from starft_cli.errors import UsageError
from starft_cli.threads import (
    MARKER_ENV,
    TORCH_DEFAULTS,
    cgroup_cpu_quota,
    check_workers,
    decide,
    parse_threads,
    usable_cores,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [(8, None, 8), (8, 2.0, 2), (8, 2.5, 2), (8, 0.5, 1), (2, 4.0, 2), (1, None, 1), (0, None, 1)],
)
def test_usable_cores_from_affinity_and_quota(affinity: int, quota: float | None, expected: int) -> None:
    assert usable_cores(affinity=affinity, quota=quota) == expected


def test_usable_cores_reads_this_process_affinity() -> None:
    assert usable_cores(quota=None) == len(os.sched_getaffinity(0))


def _cgroup(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(lines)
    return root, proc


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/jobs/a\n", {"jobs/a/cpu.max": "150000 100000\n", "cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_parent_quota_limits_the_child(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path, "0::/jobs/a\n", {"jobs/a/cpu.max": "max 100000", "jobs/cpu.max": "300000 100000", "cpu.max": "max"}
    )
    assert cgroup_cpu_quota(root, proc) == pytest.approx(3.0)


def test_cgroup_v2_without_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_quota(root, proc) == pytest.approx(0.5)
    assert usable_cores(affinity=16, quota=cgroup_cpu_quota(root, proc)) == 1


def test_cgroup_v1_unlimited_and_unreadable(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "2:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(tmp_path / "nowhere", tmp_path / "nothing") is None


def test_auto_policy_is_passive_with_one_thread_per_core() -> None:
    policy = decide({}, cores=6)
    assert (policy.threads, policy.wait_policy, policy.source) == (6, "PASSIVE", "auto")
    assert dict(policy.env) == {"OMP_NUM_THREADS": "6", "OMP_WAIT_POLICY": "PASSIVE"}


def test_user_settings_win() -> None:
    policy = decide({"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "active"}, cores=8)
    assert (policy.threads, policy.wait_policy, policy.source) == (3, "ACTIVE", "user")
    assert dict(policy.env) == {}  # nothing of the user's is overwritten
    # --threads beats an inherited OMP_NUM_THREADS, and the wait policy is still chosen when unset
    policy = decide({"OMP_NUM_THREADS": "3"}, cores=8, requested=5)
    assert (policy.threads, dict(policy.env)) == (5, {"OMP_NUM_THREADS": "5", "OMP_WAIT_POLICY": "PASSIVE"})
    policy = decide({"STARFT_THREADS": "1"}, cores=8)
    assert (policy.threads, policy.source) == (1, "user")


def test_torch_defaults_leave_the_environment_alone() -> None:
    policy = decide({"STARFT_THREADS": "torch"}, cores=8)
    assert (policy.threads, policy.wait_policy, dict(policy.env), policy.source) == (None, None, {}, TORCH_DEFAULTS)


def test_ranks_on_one_machine_share_its_cores() -> None:
    assert decide({"LOCAL_WORLD_SIZE": "2"}, cores=8).threads == 4
    assert decide({"LOCAL_WORLD_SIZE": "4"}, cores=2).threads == 1


def test_a_child_redecides_what_the_policy_set_but_keeps_what_the_user_set() -> None:
    inherited = {"OMP_NUM_THREADS": "8", "OMP_WAIT_POLICY": "PASSIVE", MARKER_ENV: "OMP_NUM_THREADS=8"}
    assert decide({**inherited, "LOCAL_WORLD_SIZE": "2"}, cores=8).threads == 4  # ours: decided again
    assert decide(inherited, cores=8).wait_policy == "PASSIVE"
    changed = {**inherited, "OMP_NUM_THREADS": "3"}  # the user changed it after us
    assert decide({**changed, "LOCAL_WORLD_SIZE": "2"}, cores=8).threads == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError, match="positive number of threads"):
        parse_threads(value)
    with pytest.raises(UsageError, match="STARFT_THREADS"):
        decide({"STARFT_THREADS": value}, cores=2)


def test_parse_threads_values() -> None:
    assert parse_threads(None) is None
    assert parse_threads("auto") is None
    assert parse_threads(" 4 ") == 4
    assert parse_threads("TORCH") == TORCH_DEFAULTS


def test_more_workers_than_cores_is_a_warning() -> None:
    cores = usable_cores()
    assert check_workers(cores) is None
    message = check_workers(cores + 3)
    assert message is not None and f"{cores + 3} data-loading workers" in message and "--workers" in message


_PROBE = """
import json, os, sys
from starft_cli.cli import app
imported_before = "torch" in sys.modules
sys.argv = ["starft", *sys.argv[1:]]
try:
    app.main()
except SystemExit:
    pass
seen = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
import torch
print(json.dumps({"torch_before": imported_before, "env": seen,
                  "threads": torch.get_num_threads()}))
"""


def _run_cli(args: list[str], env: dict[str, str], affinity: set[int] | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "STARFT_THREADS"))}
    clean.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        env=clean,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_sets_the_policy_before_torch_loads() -> None:
    out = _run_cli(["--version"], {})
    cores = len(os.sched_getaffinity(0))
    assert out["torch_before"] is False
    assert out["env"] == {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"}
    assert out["threads"] == cores


def test_cli_threads_follow_the_affinity_mask() -> None:
    out = _run_cli(["--version"], {}, affinity={0})
    assert out["env"]["OMP_NUM_THREADS"] == "1" and out["threads"] == 1


def test_cli_threads_flag_and_user_environment() -> None:
    assert _run_cli(["--threads", "1", "data", "list"], {})["threads"] == 1
    out = _run_cli(["--version"], {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    assert out["env"] == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    out = _run_cli(["--version"], {"STARFT_THREADS": "torch"})
    assert out["env"] == {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None}


def test_cli_bad_threads_value_is_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "starft_cli", "--threads", "0", "data", "list"],
        env={**os.environ, "STARFT_DEBUG": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --threads must be a positive number of threads, 'auto' or 'torch' (got '0'). e.g. 2, or 'torch' "
        "to keep torch's defaults"
    ]


def test_dataloader_workers_run_one_thread_each() -> None:
    import torch

    class Threads(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> int:
            return torch.get_num_threads()

    seen = [int(x) for batch in torch.utils.data.DataLoader(Threads(), batch_size=1, num_workers=2) for x in batch]
    assert seen == [1, 1]


def test_default_workers_follow_the_usable_cores() -> None:
    from starft_cli.train.config import default_workers

    assert default_workers() == min(4, usable_cores())
