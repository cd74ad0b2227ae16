"""Fetching, verifying and removing zoo weights.

``hf-hub`` sources go through ``huggingface_hub.hf_hub_download`` (its cache, its resume and retry logic, its
offline mode and progress bars); ``https`` sources through huggingface_hub's ``http_get`` into the starft cache;
``open_clip`` sources through open_clip's own pretrained downloader (which also uses the Hugging Face cache).
Every file with a manifest sha256 is hashed after download and before its first use; a mismatch deletes the
file and raises ``ChecksumError`` with both hashes. A verified file is remembered (path, size, mtime) so that
later runs do not hash it again; ``verify`` always re-hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.errors import ChecksumError, StarftError, WeightsUnavailableError, ZooError
from starft_cli.paths import atomic_path, atomic_write_text, cache_dir, sha256_file
from starft_cli.pretrained import (
    cached_pretrained,
    hub_endpoint,
    hub_offline,
    not_cached_error,
    short_error,
    unreachable,
)
from starft_cli.zoo.manifest import ZooEntry

logger = logging.getLogger(__name__)


@dataclass
class Resolved:
    """What ``starft_cli.models`` needs to load a zoo entry."""

    arch: str
    pretrained_tag: str | None = None
    weights: Path | None = None
    quick_gelu: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not only when huggingface_hub was imported)."""
    return hub_offline()


def endpoint() -> str:
    """The Hub endpoint (``HF_ENDPOINT``, read now)."""
    return hub_endpoint()


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _offline_hint(name: str) -> str:
    if offline():
        return (
            f"Unset HF_HUB_OFFLINE on a connected machine and run `starft zoo download {name}`, or point HF_HOME (or "
            "HF_HUB_CACHE) at a Hugging Face cache that has the model"
        )
    return (
        f"Connect and run `starft zoo download {name}`, or point HF_HOME (or HF_HUB_CACHE) at a Hugging Face cache "
        "that has the model and set HF_HUB_OFFLINE=1 to use only the cache, without waiting for the network"
    )


# ----------------------------------------------------------------------------------------------
# Verification records
# ----------------------------------------------------------------------------------------------


def _marker(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_dir("zoo", "verified") / f"{key}.json"


def _stat_key(path: Path) -> dict[str, int]:
    st = path.resolve().stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _known_good(path: Path, sha256: str) -> bool:
    marker = _marker(path)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        return record.get("sha256") == sha256 and record.get("stat") == _stat_key(path)
    except (OSError, ValueError):
        return False


def _remember(path: Path, sha256: str) -> None:
    atomic_write_text(_marker(path), json.dumps({"sha256": sha256, "stat": _stat_key(path)}))


def _delete(path: Path) -> list[Path]:
    """Delete a cached file: a Hub snapshot link, and the blob it points to when no other snapshot file of the
    repository uses it (see :func:`_blob_users`); or a plain file."""
    removed = []
    real = path.resolve()
    marker = _marker(path) if path.exists() else None
    shared = path.is_symlink() and _blob_users(path, real) > 0
    for item in (path,) if shared else (path, real):
        if item.is_symlink() or item.exists():
            item.unlink()
            removed.append(item)
    if marker is not None and marker.exists():
        marker.unlink()
    _drop_empty_snapshot(path)
    return removed


def _repo_folder(path: Path) -> Path | None:
    """The ``models--ORG--NAME`` folder of a Hugging Face cache that ``path`` (a snapshot file) is in, or None."""
    for parent in path.parents:
        if parent.name == "snapshots":
            repo = parent.parent
            return repo if (repo / "blobs").is_dir() else None
    return None


def _blob_users(path: Path, blob: Path) -> int:
    """How many snapshot files of ``path``'s cached repository, other than ``path``, resolve to ``blob``.

    Revisions of a Hub repository share one blob per file content; the cache scan of huggingface_hub
    (``scan_cache_dir``) lists every revision's files with the blob each uses, which is what its own
    ``delete_revisions`` strategy counts before deleting a blob. A scan that fails (a damaged cache) counts the
    blob as used: a file is never deleted on a guess."""
    from huggingface_hub import scan_cache_dir

    repo = _repo_folder(path)
    if repo is None:
        return 0
    try:
        info = scan_cache_dir(repo.parent)
    except Exception:  # CorruptedCacheException and OS errors: keep the blob
        return 1
    count = 0
    for cached in info.repos:
        if cached.repo_path.resolve() != repo.resolve():
            continue
        for revision in cached.revisions:
            for file in revision.files:
                if file.blob_path.resolve() == blob and file.file_path.absolute() != path.absolute():
                    count += 1
    return count


def _drop_empty_snapshot(path: Path) -> None:
    """Remove the snapshot folder of ``path`` when nothing is left in it, and the refs that name that revision
    (as huggingface_hub's ``delete_revisions`` does), so the cache scan sees no empty revision."""
    repo = _repo_folder(path)
    if repo is None:
        return
    snapshot = next((p for p in path.parents if p.parent == repo / "snapshots"), None)
    if snapshot is None or not snapshot.is_dir() or any(p.is_file() or p.is_symlink() for p in snapshot.rglob("*")):
        return
    import shutil

    shutil.rmtree(snapshot, ignore_errors=True)
    refs = repo / "refs"
    for ref in refs.rglob("*") if refs.is_dir() else []:
        try:
            if ref.is_file() and ref.read_text(encoding="utf-8").strip() == snapshot.name:
                ref.unlink()
        except OSError:
            pass


def check_file(entry: ZooEntry, path: Path, *, force: bool = False) -> str | None:
    """Check ``path`` against the entry's sha256 (re-hash when ``force``); delete and raise on mismatch.

    Returns the file's sha256 (None when the entry has no sha256 and nothing was hashed).
    """
    if entry.sha256 is None:
        return sha256_file(path) if force else None
    if not force and _known_good(path, entry.sha256):
        return entry.sha256
    actual = sha256_file(path)
    if actual != entry.sha256:
        _delete(path)
        raise ChecksumError(
            f"checksum mismatch for zoo model '{entry.name}' ({entry.source}): expected sha256 {entry.sha256}, "
            f"got {actual}; the file was deleted",
            f"Run `starft zoo download {entry.name}` again; if it fails again the manifest entry "
            f"({entry.manifest or entry.origin}) or the published file is wrong",
        )
    _remember(path, actual)
    return actual


# ----------------------------------------------------------------------------------------------
# Where a source lives in the cache (no network)
# ----------------------------------------------------------------------------------------------


def _url_cache_path(entry: ZooEntry) -> Path:
    assert entry.source.url is not None and entry.source.filename is not None
    key = hashlib.sha256(entry.source.url.encode()).hexdigest()[:16]
    return cache_dir("zoo", "url", key) / entry.source.filename


def _open_clip_cfg(entry: ZooEntry, fix: str | None = None) -> dict[str, Any]:
    from starft_cli.errors import ModelNotFoundError
    from starft_cli.pretrained import pretrained_cfg, register_builtin_configs

    register_builtin_configs()
    cfg = pretrained_cfg(entry.arch, str(entry.source.tag))
    if not cfg:
        import open_clip

        from starft_cli.suggest import did_you_mean

        tags = list(open_clip.list_pretrained_tags_by_model(entry.arch))
        known = f"Tags of {entry.arch}: {', '.join(tags) or 'none'}. " + _fix_hint(entry, fix)
        raise ModelNotFoundError(
            f"zoo model '{entry.name}': open_clip has no pretrained tag '{entry.source.tag}' for {entry.arch}",
            did_you_mean(str(entry.source.tag), tags, then=known, cutoff=0.5),
        )
    return dict(cfg)


def cached_path(entry: ZooEntry, revision: str | None = None) -> Path | None:
    """The entry's weights in the local cache, or None. Makes no request."""
    from huggingface_hub import try_to_load_from_cache

    source = entry.source
    if source.kind == "hf-hub":
        assert source.repo is not None and source.filename is not None
        found = try_to_load_from_cache(
            source.repo, source.filename, cache_dir=hub_cache(), revision=revision or source.revision
        )
        return Path(found) if isinstance(found, str) else None
    if source.kind == "url":
        path = _url_cache_path(entry)
        return path if path.is_file() else None
    if source.kind == "recipe":
        from starft_cli.runs import WEIGHTS_NAME
        from starft_cli.zoo.recipes import get_recipe

        folder = get_recipe(str(source.tag)).folder()
        return folder / WEIGHTS_NAME if (folder / WEIGHTS_NAME).is_file() else None
    return cached_pretrained(_open_clip_cfg(entry))


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------


def fetch(entry: ZooEntry, *, revision: str | None = None, tqdm_class: Any = None) -> Path:
    """The entry's verified weights, downloaded once (progress bars) and cached.

    For an ``open_clip`` source the file is fetched through open_clip's pretrained downloader.
    """
    source = entry.source
    if source.kind == "hf-hub":
        path = _fetch_hub(entry, revision=revision, tqdm_class=tqdm_class)
    elif source.kind == "url":
        path = _fetch_url(entry, tqdm_class=tqdm_class)
    elif source.kind == "recipe":
        return _build_recipe(entry)
    else:
        path = _fetch_open_clip(entry)
    check_file(entry, path)
    return path


def _build_recipe(entry: ZooEntry) -> Path:
    """A locally built model: built on first use, verified against the sha256 its build recorded."""
    from starft_cli.runs import WEIGHTS_NAME
    from starft_cli.zoo.recipes import get_recipe

    return get_recipe(str(entry.source.tag)).build() / WEIGHTS_NAME


def _fetch_hub(entry: ZooEntry, *, revision: str | None, tqdm_class: Any) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source = entry.source
    assert source.repo is not None and source.filename is not None
    rev = revision or source.revision
    where = f"{source.repo}/{source.filename}@{rev} on {endpoint()}"
    reason = None if offline() else unreachable(endpoint())  # a few seconds, not huggingface_hub's minute of retries
    try:
        return Path(
            hf_hub_download(
                source.repo,
                source.filename,
                revision=rev,
                cache_dir=hub_cache(),
                endpoint=endpoint(),
                local_files_only=offline() or reason is not None,
                tqdm_class=tqdm_class,
            )
        )
    except LocalEntryNotFoundError as exc:
        cause = f"{endpoint()} cannot be reached ({reason})" if reason else None
        cause = cause or f"the download from {where} failed ({short_error(exc.__cause__ or exc, 300)})"
        raise not_cached_error(f"zoo model '{entry.name}' ({where})", cause, _offline_hint(entry.name)) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        what = {
            RevisionNotFoundError: "revision",
            RemoteEntryNotFoundError: "file",
        }.get(type(exc), "repository")
        raise ZooError(
            f"zoo model '{entry.name}': {what} not found on the Hub ({where})",
            f"The manifest entry ({entry.manifest or entry.origin}) is wrong or the repository is private "
            "(log in with `hf auth login`)",
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise ZooError(
                f"zoo model '{entry.name}': access to {where} denied (HTTP {status})",
                "The repository is private or gated: log in with `hf auth login` (or set HF_TOKEN)",
            ) from exc
        raise WeightsUnavailableError(
            f"download of zoo model '{entry.name}' from {where} failed ({short_error(exc)})",
            f"Run `starft zoo download {entry.name}` again; no partial file was kept in the cache",
        ) from exc
    except (OSError, ValueError) as exc:
        # Interrupted beyond huggingface_hub's retries, size mismatch: nothing partial is kept.
        raise WeightsUnavailableError(
            f"download of zoo model '{entry.name}' from {where} failed ({short_error(exc)})",
            f"Run `starft zoo download {entry.name}` again; no partial file was kept in the cache",
        ) from exc
    except Exception as exc:  # httpx transport errors are not OSErrors
        raise WeightsUnavailableError(
            f"download of zoo model '{entry.name}' from {where} failed ({type(exc).__name__}: {short_error(exc)})",
            f"Run `starft zoo download {entry.name}` again; no partial file was kept in the cache",
        ) from exc


def _fetch_url(entry: ZooEntry, *, tqdm_class: Any) -> Path:
    from huggingface_hub.file_download import http_get

    target = _url_cache_path(entry)
    if target.is_file():
        return target
    reason = None if offline() else unreachable(str(entry.source.url))
    if offline() or reason:
        cause = f"the host cannot be reached ({reason})"
        if offline():
            cause = "HF_HUB_OFFLINE is set, so nothing is downloaded"
        raise WeightsUnavailableError(
            f"zoo model '{entry.name}' ({entry.source.url}): not in the local cache ({target.parent}), and {cause}",
            _offline_hint(entry.name),
        )
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            http_get(str(entry.source.url), handle, displayed_filename=target.name, tqdm_class=tqdm_class)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"download of zoo model '{entry.name}' from {entry.source.url} failed ({short_error(exc)})",
            f"Run `starft zoo download {entry.name}` again; no partial file was kept in the cache",
        ) from exc
    return target


def _fetch_open_clip(entry: ZooEntry) -> Path:
    from starft_cli.pretrained import fetch_pretrained

    cfg = _open_clip_cfg(entry)
    return fetch_pretrained(entry.arch, str(entry.source.tag), cfg, hint=_offline_hint(entry.name))


# ----------------------------------------------------------------------------------------------
# Resolve, verify, remove
# ----------------------------------------------------------------------------------------------


def _fix_hint(entry: ZooEntry, fix: str | None = None) -> str:
    if fix is not None:
        return fix
    if entry.origin == "user":
        where = entry.manifest or "your user manifest"
        return f"Fix the entry in {where}, or remove it: `starft zoo rm {entry.name} --forget`"
    return f"Fix the entry in {entry.manifest or entry.origin}"


def _check_arch(entry: ZooEntry, fix: str | None = None) -> None:
    from starft_cli.errors import ModelNotFoundError
    from starft_cli.pretrained import list_architectures
    from starft_cli.suggest import did_you_mean

    archs = list_architectures()
    if entry.arch not in archs:
        raise ModelNotFoundError(
            f"zoo model '{entry.name}' names an unknown architecture '{entry.arch}' (architectures are open_clip's "
            "and starft's own starft-tiny/starft-small)",
            did_you_mean(entry.arch, archs, then=_fix_hint(entry, fix)),
        )


def check_entry(entry: ZooEntry, fix: str | None = None) -> None:
    """Check that ``entry`` can be resolved, without any download: its architecture is known to open_clip (or
    registered by starft) and an ``open_clip:TAG`` source names a pretrained tag of that architecture.

    Raises :class:`~starft_cli.errors.ModelNotFoundError` naming the problem, close matches and ``fix`` (default:
    where to fix the entry).
    """
    _check_arch(entry, fix)
    if entry.source.kind == "open_clip":
        _open_clip_cfg(entry, fix)


def resolve(entry: ZooEntry) -> Resolved:
    """What to load for ``entry``: an open_clip pretrained tag, or a verified local safetensors file.

    The architecture is checked before anything is downloaded.
    """
    if entry is None:
        raise ZooError("resolve() needs a zoo entry", "Look it up with find_entry(name)")
    _check_arch(entry)
    if entry.source.kind == "open_clip":
        return Resolved(
            arch=entry.arch,
            pretrained_tag=entry.source.tag,
            quick_gelu=entry.quick_gelu,
            preprocess=dict(entry.preprocess),
        )
    weights = fetch(entry)
    from starft_cli.runs import WEIGHTS_NAME

    if entry.source.kind == "hf-hub" and entry.source.filename == WEIGHTS_NAME:
        _fetch_head(entry)
    return Resolved(arch=entry.arch, weights=weights, quick_gelu=entry.quick_gelu, preprocess=dict(entry.preprocess))


def _fetch_head(entry: ZooEntry) -> None:
    """Bring a published classifier's trained head (``classification_head.safetensors``, with the
    ``open_clip_config.json`` that names its classes) into the snapshot beside the weights, when the repository has
    one (``starft zoo publish`` uploads it). Optional: a file the Hub lacks (remembered by the cache), an offline
    machine or a failed download leave the model without it, and it is asked for at most once per revision."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from starft_cli.runs import CONFIG_NAME, HEAD_NAME

    source = entry.source
    assert source.repo is not None
    for name in (CONFIG_NAME, HEAD_NAME):
        cached = try_to_load_from_cache(source.repo, name, cache_dir=hub_cache(), revision=source.revision)
        if cached is not None:  # a path, or the cache's record that the revision has no such file
            continue
        if offline() or unreachable(endpoint()) is not None:
            return
        try:
            hf_hub_download(source.repo, name, revision=source.revision, cache_dir=hub_cache(), endpoint=endpoint())
        except Exception as exc:  # absent (recorded by huggingface_hub) or failed: the weights alone still load
            logger.debug("no %s for zoo model %s (%s)", name, entry.name, short_error(exc))
            if name == CONFIG_NAME:
                return


@dataclass
class VerifyResult:
    name: str
    status: str  # ok, mismatch, missing, unpinned, broken (the entry cannot be resolved)
    path: Path | None
    expected: str | None
    actual: str | None
    message: str = ""


def verify(entry: ZooEntry) -> VerifyResult:
    """Re-hash the entry's cached file (no download). A mismatch deletes the file."""
    path = cached_path(entry)
    if path is None:
        return VerifyResult(entry.name, "missing", None, entry.sha256, None, "not downloaded")
    if entry.source.kind == "recipe":
        from starft_cli.zoo.recipes import get_recipe

        problem = get_recipe(str(entry.source.tag)).verify(path.parent)
        if problem is not None:
            return VerifyResult(entry.name, "mismatch", path, None, None, problem)
        return VerifyResult(entry.name, "ok", path, None, sha256_file(path), "built locally; matches its build record")
    if entry.sha256 is None:
        actual = sha256_file(path)
        return VerifyResult(entry.name, "unpinned", path, None, actual, "no sha256 in the manifest")
    try:
        actual = check_file(entry, path, force=True)
    except ChecksumError as exc:
        return VerifyResult(entry.name, "mismatch", path, entry.sha256, None, exc.one_line())
    return VerifyResult(entry.name, "ok", path, entry.sha256, actual)


def verify_all(entries: list[ZooEntry]) -> list[VerifyResult]:
    """Verify every downloaded entry. A file two entries share is deleted only if it matches neither's sha256
    (an entry with a wrong hash must not destroy the file another, correct entry uses)."""
    located: list[tuple[ZooEntry, Path | None]] = []
    results = []
    for entry in entries:
        try:
            located.append((entry, cached_path(entry)))
        except StarftError as exc:  # a broken entry is reported; it must not stop the others' verification
            results.append(VerifyResult(entry.name, "broken", None, entry.sha256, None, exc.one_line()))
    by_path: dict[Path, list[ZooEntry]] = {}
    for entry, path in located:
        if path is not None:
            by_path.setdefault(path.resolve(), []).append(entry)
    for entry, path in located:
        if path is None:
            continue
        sharing = by_path[path.resolve()]
        pinned = {e.sha256 for e in sharing if e.sha256}
        if len(sharing) > 1 and entry.sha256 and len(pinned) > 1:
            actual = sha256_file(path)
            if actual in pinned and actual != entry.sha256:
                owner = next(e.name for e in sharing if e.sha256 == actual)
                message = (
                    f"the manifest pins sha256 {entry.sha256} but the file (shared with '{owner}', which it matches) "
                    f"has {actual}; fix the entry in {entry.manifest or entry.origin}"
                )
                results.append(VerifyResult(entry.name, "mismatch", path, entry.sha256, actual, message))
                continue
        results.append(verify(entry))
    return results


def remove(entry: ZooEntry) -> list[Path]:
    """Delete the entry's cached weights; returns what was deleted (empty when nothing was cached)."""
    path = cached_path(entry)
    if path is not None and entry.source.kind == "recipe":
        import shutil

        shutil.rmtree(path.parent)
        return [path.parent]
    return _delete(path) if path is not None else []
