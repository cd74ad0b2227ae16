"""Where starft keeps its caches and configuration (platformdirs; ``STARFT_HOME`` overrides)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import platformdirs

APP_NAME = "starft"


def home() -> Path | None:
    """``$STARFT_HOME`` if set: then caches live in ``$STARFT_HOME/cache``, config in ``$STARFT_HOME/config``."""
    value = os.environ.get("STARFT_HOME")
    return Path(value).expanduser() if value else None


def cache_path(*parts: str) -> Path:
    """The cache directory (or a sub-directory of it), not created."""
    root = home()
    base = root / "cache" if root else Path(platformdirs.user_cache_dir(APP_NAME))
    return base.joinpath(*parts)


def cache_dir(*parts: str) -> Path:
    """The cache directory (or a sub-directory of it), created on demand."""
    path = cache_path(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """The user configuration directory (not created)."""
    root = home()
    return root / "config" if root else Path(platformdirs.user_config_dir(APP_NAME))


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where it is there, so nothing is changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore, as every portable way to read it does
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666`` less the umask (0644 under 022)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the umask; ``mkstemp`` alone makes it
    0600). A crash or an exception leaves ``target`` as it was (the temporary file is removed). A write failure is
    raised as an :class:`OSError` naming ``target`` (not the temporary file), also where the writing library raised
    its own type for it (see :func:`as_os_error`: safetensors' ``SafetensorError``, torch's ``RuntimeError``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if tmp_path.exists():  # the caller may have replaced the file (e.g. a library writing by rename)
                os.chmod(tmp_path, file_mode())
            os.replace(tmp_path, target)
        except Exception as exc:
            mapped = as_os_error(exc, target, tmp_path)
            if mapped is None:
                raise
            raise mapped from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# What torch's zip writer says when a write to its file failed (it gives no errno): a full disk shows as
# "[enforce fail at inline_container.cc:NNN] . unexpected pos 640 vs 534" (measured on a full tmpfs), a failed
# stream as "PytorchStreamWriter failed writing file ..." or "basic_ios::clear: iostream error".
_TORCH_WRITE_FAILURES = ("inline_container.cc", "PytorchStreamWriter failed", "basic_ios::clear", "file write failed")
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
# Below this many free bytes, a write that failed without saying why is taken to have found the disk full.
_NEARLY_FULL = 1 << 20
_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS") if hasattr(errno, name)
)


def as_os_error(
    exc: BaseException, target: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None
) -> OSError | None:
    """The :class:`OSError` that a failed write of ``target`` really is, or None when ``exc`` is no write failure.

    Libraries raise their own types for a failed write (measured on a full tmpfs): safetensors a
    ``SafetensorError`` ("Error while serializing: I/O error: No space left on device (os error 28)"), whose errno
    is read from the message; torch a ``RuntimeError`` from its zip writer (see ``_TORCH_WRITE_FAILURES``) without
    an errno, taken as ENOSPC when the file system holding ``target`` has less than 1 MiB free, else EIO. An
    ``OSError`` naming the temporary file ``tmp`` (or no file) is given ``target`` as its file name. This is the
    one place these types are mapped: every atomic write (:func:`atomic_path`, :func:`atomic_dir`) goes through it.
    """
    import shutil

    target = Path(target)
    if isinstance(exc, OSError):
        names_tmp = tmp is not None and exc.filename is not None and str(exc.filename) == str(tmp)
        unnamed_write = exc.filename is None and exc.errno in _WRITE_ERRNOS  # a file object's write() names none
        return _os_error(exc.errno, target) if exc.errno is not None and (names_tmp or unnamed_write) else None
    text = str(exc)
    code: int | None = None
    if type(exc).__name__ == "SafetensorError":
        found = _OS_ERROR_CODE.search(text)
        code = int(found.group(1)) if found else None
    elif isinstance(exc, RuntimeError) and any(marker in text for marker in _TORCH_WRITE_FAILURES):
        try:
            nearly_full = shutil.disk_usage(target.parent).free < _NEARLY_FULL
        except OSError:
            nearly_full = False
        code = errno.ENOSPC if nearly_full else errno.EIO
    return None if code is None else _os_error(code, target)


def _in_target(exc: OSError, tmp: Path, target: Path) -> OSError | None:
    """``exc`` naming the file's final place under ``target`` instead of the temporary folder ``tmp`` (None when it
    names no file in ``tmp``): the user never sees the temporary folder, which is gone by then."""
    if exc.errno is None or exc.filename is None:
        return None
    try:
        inner = Path(exc.filename).relative_to(tmp)
    except ValueError:
        return None
    return _os_error(exc.errno, target / inner)


def _os_error(code: int, target: Path) -> OSError:
    return OSError(code, os.strerror(code), str(target))


@contextmanager
def cache_write(what: str, *paths: str | os.PathLike[str]) -> Iterator[None]:
    """Around writing a cache entry: a failed write (a full disk, an I/O error, a read-only cache) is a warning,
    not an error, since the entry is only a saving. ``paths`` (companion files written before the failing one) are
    removed, so no half entry is left for a later run (each file goes through :func:`atomic_path`: none is torn)."""
    import logging

    try:
        yield
    except OSError as exc:
        for path in paths:
            with suppress(OSError):
                Path(path).unlink(missing_ok=True)
        logging.getLogger(__name__).warning(
            "could not write the %s cache (%s%s); continuing without it",
            what,
            exc.strerror or exc,
            f": {exc.filename}" if exc.filename else "",
        )


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (removed first if present).

    Files directly in it get the mode a plain ``open()`` would give them, the folder ``0o777`` less the umask. An
    exception leaves ``target`` as it was and removes the temporary folder; a library's own type for a failed write
    is raised as an :class:`OSError` (:func:`as_os_error`). (Replacing an existing folder is two
    renames apart, not one: a crash in between leaves no ``target``, never a partial one.)
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            yield tmp
        except Exception as exc:
            mapped = _in_target(exc, tmp, target) if isinstance(exc, OSError) else as_os_error(exc, target, tmp)
            if mapped is None:
                raise
            raise mapped from exc
        for path in tmp.iterdir():
            if path.is_file():
                os.chmod(path, file_mode())
        os.chmod(tmp, 0o777 & ~current_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in ``chunk``-byte blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def build_lock(target: str | os.PathLike[str], on_wait: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``.TARGET.lock`` beside ``target`` while building it; a second process waits for the
    first (``on_wait(target)`` is called once when it has to) and then finds the built ``target``, instead of
    failing or building it twice. The lock is the operating system's (``flock``): it is released when its holder
    exits, a killed process included, so it never goes stale. Where ``flock`` does not exist (Windows) the build is
    not serialised.

    Raises:
        OSError: the lock file cannot be created (a read-only folder, a full disk)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(target)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
