"""One writer at a time in an output folder: the lock around every read-merge-write of results.

``starft eval --out``, ``probe --out``, ``report --out/--plot`` and ``demo --out`` read what a folder holds
(``results.json``), merge their records into it and write it back with the leaderboards and figures. Two processes
doing that at once each read the old file, and the second rename drops the first one's records while both say
"wrote". :func:`folder_lock` makes the read-merge-write one step: a second process waits (saying so once) until the
first has written, then merges into what the first wrote. A fine-tuning run's folder has its own lock, which
refuses a second writer instead (:func:`starft_cli.train.checkpoint.run_lock`: a run cannot be merged).

The lock is an exclusive ``flock`` on the folder itself (no lock file is left in it); the kernel releases it when
the holder exits, however it exits, so a killed writer never leaves a stale lock. It is re-entrant within a thread
(``demo`` holds it around ``write_report``, which takes it too). Where the file system has no ``flock`` (some
network mounts) it warns and goes on unlocked.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from starft_cli.errors import OutputInUseError

logger = logging.getLogger(__name__)

WAIT_S = 600.0  # how long a writer waits for another one before giving up (a write takes seconds)
POLL_S = 0.05
_held = threading.local()  # realpath -> depth of the locks this thread holds


@contextmanager
def folder_lock(
    folder: str | os.PathLike[str],
    *,
    wait_s: float | None = WAIT_S,
    on_wait: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if absent) for a read-merge-write of what it holds.

    Another starft process holding it is waited for (one warning says so, or ``on_wait(folder)`` is called) for up
    to ``wait_s`` seconds (None: for as long as it holds it).

    Raises:
        OutputInUseError: ``folder`` was still locked by another process after ``wait_s`` seconds.
        OSError: ``folder`` cannot be created or opened.
    """
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):
        depth[key] += 1
        try:
            yield path
        finally:
            depth[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    fd = os.open(path, os.O_RDONLY)
    try:
        if fcntl is not None:
            _acquire(fcntl, fd, path, wait_s, on_wait)
        depth[key] = 1
        try:
            yield path
        finally:
            depth.pop(key, None)
    finally:
        os.close(fd)  # releases the flock


def _acquire(
    fcntl: object, fd: int, path: Path, wait_s: float | None, on_wait: Callable[[Path], None] | None = None
) -> None:
    """Take the flock on ``fd``, waiting for another holder (see :func:`folder_lock`); ``wait_s`` None waits for as
    long as the holder runs; ``on_wait(path)`` is called once when this has to wait (default: a warning)."""
    flock, exclusive, nonblocking = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_NB  # type: ignore[attr-defined]
    deadline = None
    while True:
        try:
            flock(fd, exclusive | nonblocking)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EINVAL, errno.EBADF, errno.EOPNOTSUPP):
                logger.warning(
                    "cannot lock %s (%s): another starft process writing there at the same time may lose records",
                    path,
                    exc.strerror or exc,
                )
                return
            raise
        now = time.monotonic()
        if deadline is None:
            deadline = now + wait_s if wait_s is not None else float("inf")
            if on_wait is not None:
                on_wait(path)
            else:
                logger.warning("waiting for another starft process to finish writing %s", path)
        elif now >= deadline:
            raise OutputInUseError(
                f"{path} is still being written by another starft process after {wait_s:g} s",
                "Wait for it to finish, or choose another `out`",
                param="out",
            )
        time.sleep(POLL_S)


@contextmanager
def build_lock(target: str | os.PathLike[str], on_wait: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Hold the lock of a cached build of ``target`` (the demo's model, a generated dataset): a second process
    needing a build in the same folder waits for the first for as long as it runs (``on_wait(target)`` is called
    once when it has to), then finds ``target`` built, instead of failing or building it twice. The lock is a
    ``flock`` on the folder that holds ``target`` (``target`` itself is replaced by an atomic rename while built; no
    lock file is left behind), released by the kernel when its holder exits, however it exits. Builds of other
    targets in the same folder wait for each other too: they are rare and short.

    Raises:
        OSError: the folder cannot be created or opened."""
    target = Path(target)
    with folder_lock(target.parent, wait_s=None, on_wait=lambda _: on_wait(target) if on_wait else None) as folder:
        yield folder
