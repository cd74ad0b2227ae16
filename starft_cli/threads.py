"""The CPU thread policy, chosen once at process start (before torch loads its OpenMP runtime).

Why: torch's CPU build runs intra-op work on an OpenMP thread pool whose threads *spin* at every barrier while
they wait for each other. On an idle machine that saves a few microseconds per operation; on a machine where
other processes also want the cores, the spinning threads take the time slices that the thread they wait for
needs, and a small model's step gets many times slower (measured in ``benchmarks/contention.py``). The policy:

- **wait policy** ``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps instead of spinning;
- **intra-op threads** = the cores this process may actually use: the CPU affinity mask
  (``os.sched_getaffinity``), capped by the cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` in v1); ``os.cpu_count()`` counts cores the process may not run on.

What the user sets wins: ``--threads N`` / ``STARFT_THREADS=N`` choose the count; ``STARFT_THREADS=torch`` leaves
torch's defaults untouched; an ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY`` already in the environment is kept.
DataLoader worker processes run one intra-op thread each (torch sets that in every worker); a worker count above
the usable cores is warned about where workers are chosen. GPU runs are unaffected: the policy only shapes CPU
thread pools.

The OpenMP runtime reads ``OMP_*`` variables when it is loaded, so :func:`apply_thread_policy` must run before
``import torch`` (the CLI calls it first thing); called later it can still set the intra-op count
(``torch.set_num_threads``) but not the wait policy, and says so at debug level.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from starft_cli.errors import UsageError

log = logging.getLogger(__name__)

#: The environment variable that carries ``--threads`` (and lets a user set it once for every command).
THREADS_ENV = "STARFT_THREADS"
#: ``STARFT_THREADS`` / ``--threads`` value that leaves torch's own defaults in place.
TORCH_DEFAULTS = "torch"
#: Where the policy notes the variables it set (``OMP_NUM_THREADS=2,OMP_WAIT_POLICY=PASSIVE``), so that a child
#: process (a torchrun rank, a test's subprocess) can tell them from the user's and decide for itself.
MARKER_ENV = "STARFT_THREADS_SET"


@dataclasses.dataclass(frozen=True)
class ThreadPolicy:
    """What the process runs with. ``threads``: intra-op threads (None: torch's default, the core count);
    ``wait_policy``: the OpenMP wait policy (None: the runtime's default, spin then sleep); ``env``: the variables
    this policy set (those the user had set are not in it); ``source``: ``auto``, ``user`` (--threads /
    STARFT_THREADS / OMP_NUM_THREADS) or ``torch`` (STARFT_THREADS=torch)."""

    threads: int | None
    wait_policy: str | None
    env: Mapping[str, str]
    source: str
    usable_cores: int


def cgroup_cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in cores (``200000 100000`` in ``cpu.max`` = 2.0), or None when there
    is no quota (``max``) or no cgroup file can be read. Looks at the process's own cgroup (from ``/proc/self/cgroup``)
    and then the hierarchy's root, for cgroup v2 (``cpu.max``) and v1 (``cpu/cpu.cfs_quota_us``, ``-1`` = none).
    The smallest quota found along the way wins (a parent's quota limits its children)."""
    quotas: list[float] = []
    for folder in _cgroup_folders(root, proc_cgroup):
        v2 = _read(folder / "cpu.max")
        if v2:
            parts = v2.split()
            if len(parts) >= 1 and parts[0] != "max":
                quotas.extend(_ratio(parts[0], parts[1] if len(parts) > 1 else "100000"))
            continue
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota and period and quota.strip() != "-1":
            quotas.extend(_ratio(quota, period))
    return min(quotas) if quotas else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    folders: list[Path] = []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():  # "0::/user.slice/x" (v2) or "4:cpu,cpuacct:/docker/abc" (v1)
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path:
            continue
        base = root if hierarchy_id == "0" and not controllers else root / _v1_mount(controllers)
        if hierarchy_id != "0" and "cpu" not in controllers.split(","):
            continue
        node = base / path.lstrip("/")
        while True:  # the process's own cgroup up to the hierarchy's root
            folders.append(node)
            if node == base or node.parent == node:
                break
            node = node.parent
    if root not in folders:
        folders.append(root)
    return folders


def _v1_mount(controllers: str) -> str:
    names = controllers.split(",")
    return "cpu,cpuacct" if "cpuacct" in names else "cpu"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> list[float]:
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return []
    return [q / p] if q > 0 and p > 0 else []


def usable_cores(affinity: int | None = None, quota: float | None = None) -> int:
    """The cores this process may use: the affinity mask's size (``affinity``, default: read it), capped by a
    cgroup CPU quota in cores (``quota``: a fractional quota rounds down, at least 1). Never below 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS and Windows have no affinity call
            affinity = os.cpu_count() or 1
    cores = max(1, affinity)
    if quota is not None and quota > 0:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def parse_threads(value: str | int | None, *, env: bool = False) -> int | str | None:
    """``--threads`` (argument ``threads``) or, with ``env``, ``STARFT_THREADS``: a positive integer, ``auto``
    (None) or ``torch``.

    Raises:
        UsageError: anything else (``0``, ``-1``, ``two``), naming the flag or the variable."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto" or (text == "" and env):
        return None
    if text == TORCH_DEFAULTS:
        return TORCH_DEFAULTS
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        what = THREADS_ENV if env else "`threads`"
        raise UsageError(
            f"{what} must be a positive number of threads, 'auto' or 'torch' (got {value!r})",
            "e.g. 2, or 'torch' to keep torch's defaults",
            param=None if env else "threads",
        )
    return n


def decide(environ: Mapping[str, str], cores: int, requested: int | str | None = None) -> ThreadPolicy:
    """The policy for a process that may use ``cores`` cores, given its environment and ``requested`` (the parsed
    ``--threads``; None: ``STARFT_THREADS`` from ``environ``, else automatic). Pure: sets nothing."""
    if requested is None:
        requested = parse_threads(environ.get(THREADS_ENV), env=True)
    ours = _marked(environ)
    user = {k: v for k, v in environ.items() if k.startswith("OMP_") and v and ours.get(k) != v}
    if requested == TORCH_DEFAULTS:
        return ThreadPolicy(None, user.get("OMP_WAIT_POLICY"), {}, TORCH_DEFAULTS, cores)
    env: dict[str, str] = {}
    source = "auto"
    if isinstance(requested, int):
        threads, source = requested, "user"
        env["OMP_NUM_THREADS"] = str(threads)  # an explicit --threads beats an inherited OMP_NUM_THREADS
    elif _positive_int(user.get("OMP_NUM_THREADS")) is not None:
        threads, source = _positive_int(user.get("OMP_NUM_THREADS")), "user"
    else:
        # processes started together on one machine (torchrun's ranks) share its cores
        threads = max(1, cores // (_positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1))
        env["OMP_NUM_THREADS"] = str(threads)
    wait = user.get("OMP_WAIT_POLICY")
    if not wait:
        wait = "PASSIVE"
        env["OMP_WAIT_POLICY"] = wait
    return ThreadPolicy(threads, wait.upper(), env, source, cores)


def _marked(environ: Mapping[str, str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in environ.get(MARKER_ENV, "").split(",") if item)
    return {key: value for key, _, value in pairs}


def _positive_int(text: str | None) -> int | None:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


_applied: ThreadPolicy | None = None


def apply_thread_policy(
    requested: int | str | None = None, environ: MutableMapping[str, str] | None = None
) -> ThreadPolicy:
    """Choose the policy (:func:`decide` over :func:`usable_cores`) and put it in place: its variables into
    ``environ`` (default ``os.environ``, inherited by DataLoader workers and torchrun children), and, if torch is
    already imported, ``torch.set_num_threads``. Call it before ``import torch``. Returns the policy.

    Raises:
        UsageError: ``STARFT_THREADS`` is not a positive integer, ``auto`` or ``torch``."""
    global _applied
    environ = os.environ if environ is None else environ
    policy = decide(environ, usable_cores(quota=cgroup_cpu_quota()), requested)
    environ.update(policy.env)
    if policy.env:
        environ[MARKER_ENV] = ",".join(f"{k}={v}" for k, v in policy.env.items())
    else:
        environ.pop(MARKER_ENV, None)
    torch = sys.modules.get("torch")
    if torch is not None and policy.threads is not None:
        if torch.get_num_threads() != policy.threads:
            torch.set_num_threads(policy.threads)
        log.debug("torch was imported before the thread policy: its OpenMP wait policy stays as it was")
    log.debug("thread policy: %s", policy)
    _applied = policy
    return policy


def current_policy() -> ThreadPolicy | None:
    """The policy :func:`apply_thread_policy` last put in place in this process (None: never applied)."""
    return _applied


def check_workers(workers: int, *, param: str = "--workers") -> str | None:
    """A warning when ``workers`` DataLoader processes exceed the usable cores (each competes with the main
    process's threads for them), else None."""
    cores = usable_cores(quota=cgroup_cpu_quota())
    if workers > cores:
        return (
            f"{workers} data-loading workers on {cores} usable core(s): they compete with the main process's "
            f"threads for the cores; {param} {cores} or fewer is usually faster"
        )
    return None


def checked_workers(workers: int) -> int:
    """``workers``, logged as a warning (:func:`check_workers`) where DataLoader processes outnumber the cores."""
    warning = check_workers(workers)
    if warning:
        log.warning("%s", warning)
    return workers
