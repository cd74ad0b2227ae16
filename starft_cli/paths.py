"""Where starft keeps its caches and configuration (platformdirs; ``STARFT_HOME`` overrides)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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
    0600). A crash or an exception leaves ``target`` as it was (the temporary file is removed). An ``OSError``
    about the temporary file (a full disk while writing it) is raised again naming ``target``, the file the user
    knows.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # the caller may have replaced the file (e.g. a library writing by rename)
            os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.filename not in (None, str(tmp_path), tmp_path):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    exception leaves ``target`` as it was and removes the temporary folder. (Replacing an existing folder is two
    renames apart, not one: a crash in between leaves no ``target``, never a partial one.)
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
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
