"""The one verified-download helper for files that are not on the Hugging Face Hub (public dataset archives).

A download goes to ``TARGET.part`` (appended to, so an interrupted download resumes where it stopped, with an HTTP
``Range`` request), is checked against the expected size and sha256, and only then renamed to ``TARGET``: a file
that looks complete is always verified. A checksum mismatch deletes the partial file. Archives are extracted into a
temporary folder beside the destination and renamed into place, so a half-extracted dataset never looks present.
Transfers use huggingface_hub's ``http_get`` (retries, progress bar).
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from starft_cli.errors import DataError


class DownloadError(DataError):
    """A download that failed (network, disk), or whose bytes do not match the recorded size or sha256."""


def _sha256(path: Path) -> str:
    from starft_cli.paths import sha256_file

    return sha256_file(path)


def download_verified(
    url: str,
    target: str | os.PathLike[str],
    *,
    sha256: str | None,
    size: int | None = None,
    what: str = "",
    again: str = "",
    tqdm_class: Any = None,
) -> str:
    """Fetch ``url`` to ``target`` (resuming ``target.part``), verify, rename into place; returns the sha256.

    Nothing is fetched when ``target`` exists and matches ``sha256`` (or, without one, ``size``). ``what`` names the
    file in messages and ``again`` is the command that retries.

    Raises :class:`DownloadError`: unreachable host (within seconds), HF_HUB_OFFLINE set, transfer failure (the
    partial file is kept for the next run to resume), no space left on the disk, a size or sha256 mismatch (the
    partial file is deleted)."""
    from huggingface_hub.file_download import http_get

    from starft_cli.pretrained import hub_offline, short_error, unreachable

    target = Path(target)
    what = what or target.name
    again = again or "Run the same command again: it resumes"
    if target.is_file():
        actual = _sha256(target) if sha256 else None
        if (sha256 and actual == sha256) or (not sha256 and (size is None or target.stat().st_size == size)):
            return actual or _sha256(target)
    if hub_offline():
        raise DownloadError(f"{what} ({url}) is not downloaded, and HF_HUB_OFFLINE is set", "Unset it and run it again")
    reason = unreachable(url)
    if reason is not None:
        raise DownloadError(f"{what}: {url} cannot be reached ({reason}); nothing was downloaded", again)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    resume = part.stat().st_size if part.exists() else 0
    if size is not None and resume > size:
        part.unlink()
        resume = 0
    try:
        with part.open("ab") as handle:
            if size is None or resume < size:
                http_get(
                    url,
                    handle,
                    resume_size=resume,
                    expected_size=size,
                    displayed_filename=target.name,
                    tqdm_class=tqdm_class,
                )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(
                f"{what}: no space left on the disk of {target.parent}; the partial file {part.name} is kept (it "
                "never counts as downloaded)",
                f"Free space and {again[0].lower() + again[1:]}",
            ) from exc
        raise DownloadError(
            f"download of {what} from {url} failed ({short_error(exc)}); kept for resuming", again
        ) from exc
    except Exception as exc:  # httpx transport errors are not OSErrors; http_get's size check raises EnvironmentError
        raise DownloadError(
            f"download of {what} from {url} failed ({type(exc).__name__}: {short_error(exc)}); kept for resuming", again
        ) from exc
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"{what}: {got} bytes arrived, {size} expected; the partial file was deleted", again)
    actual = _sha256(part)
    if sha256 and actual != sha256:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {what} ({url}): expected sha256 {sha256}, got {actual}; the file was deleted",
            again + "; if it fails again the published file changed",
        )
    os.replace(part, target)
    return actual


def extract_atomic(archive: Path, data_root: Path, folder: str, *, inner: str | None = None) -> Path:
    """Extract ``archive`` (tar, tar.gz, zip) so that ``data_root/folder`` appears at once, complete: into a
    temporary folder under ``data_root``, then renamed. ``inner`` is the folder inside the archive that becomes
    ``folder`` (default: the archive's single top folder, or its whole content). Members that would land outside
    the folder (absolute paths, ``..``, links out) are refused (tarfile's ``data`` filter).

    Raises :class:`DownloadError` for an unreadable archive or when ``data_root/folder`` exists already."""
    final = data_root / folder
    if final.exists():
        raise DownloadError(f"{final} exists already", f"Remove it to extract {archive.name} again")
    work = data_root / f".{folder}.extracting"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise DownloadError(f"{archive.name} holds an unsafe member '{name}'")
                z.extractall(work)
        else:
            with tarfile.open(archive) as t:
                t.extractall(work, filter="data")
        entries = list(work.iterdir())
        source = work / inner if inner else (entries[0] if len(entries) == 1 and entries[0].is_dir() else work)
        if not source.is_dir():
            raise DownloadError(f"{archive.name} has no folder {inner}")
        os.replace(source, final) if source != work else os.replace(work, final)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"cannot extract {archive} ({exc})", "Delete it and download it again") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
