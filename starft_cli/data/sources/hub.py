"""The webdataset copies of the benchmarks on the Hugging Face Hub (CLIP_benchmark's ``wds/`` datasets).

Layout of each dataset repository (CLIP_benchmark 1.6.2, ``clip_benchmark/datasets/builder.py``,
``build_wds_dataset``: it reads ``{split}/nshards.txt``, the shards ``{split}/{0..n-1}.tar``, and
``classnames.txt`` and ``zeroshot_classification_templates.txt`` at the top; sample keys ``webp/png/jpg/jpeg`` for
the image and ``cls`` for the label)::

    classnames.txt
    zeroshot_classification_templates.txt
    test/nshards.txt
    test/0.tar ... test/<n-1>.tar

A :class:`HubCopy` registers the copy of one registered dataset: the repository, the revision, each split's
folder and published number of samples, and how the copy's labels map onto the registered dataset's classes
(its protocol), so that the copy yields the same labels, class order and groups as the folder layout. A copy
whose class list or split is another protocol (VTAB's Caltech101) is registered as a dataset of its own.

Files go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, resumable downloads, progress bars); every
shard is checked against the sha256 the Hub publishes for it (its LFS ETag) right after download, and a split is
read only when all its shards are there and the samples counted match the registration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.errors import DataError

logger = logging.getLogger(__name__)

NSHARDS = "nshards.txt"
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
LARGE_BYTES = 100 * 2**20  # downloads above this are announced before they start


class DatasetUnavailableError(DataError):
    """A Hub copy that is neither in the local cache nor downloadable now (offline, unreachable, denied)."""


class DatasetChecksumError(DataError):
    """A downloaded shard whose sha256 differs from the one the Hub publishes (the file is deleted)."""


class IncompleteDatasetError(DataError):
    """A split whose shards hold fewer (or more) samples than its registration says."""


@dataclass(frozen=True)
class HubSplit:
    folder: str  # the split's folder in the repository
    samples: int  # the published number of samples; a copy holding another number is never read as whole


@dataclass(frozen=True)
class HubCopy:
    """The Hub copy of the registered dataset ``dataset``.

    ``classes`` says how the copy's labels (lines of its ``classnames.txt``) map onto the dataset's classes:
    ``same`` (label N is the dataset's class N; ``protocol`` gives the class names, else the copy's are used),
    ``subset`` (ImageNet-R/A: label N is the ImageNet class whose wnid is line N of the asset ``subset_asset``;
    the dataset's labels live in ImageNet's 1000-class space, as its folder layout's do), ``name`` (each of the
    copy's class names is looked up in ``protocol()`` by name, case, spacing and underscores aside).
    ``region_column``: the column of the ``.npy`` metadata row that holds the WILDS region index (FMoW).
    ``revision`` is what is downloaded; ``seen`` the commit the registration was checked against (see ``cited``).
    """

    dataset: str
    repo: str
    splits: Mapping[str, HubSplit]
    classes: str = "same"
    protocol: Callable[[], list[str]] | None = field(default=None, compare=False)
    subset_asset: str | None = None
    region_column: int | None = None
    revision: str = "main"
    seen: str = ""
    cited: str = ""


HUB_COPIES: dict[str, HubCopy] = {}


def register_hub_copy(copy: HubCopy) -> HubCopy:
    """Add ``copy`` to :data:`HUB_COPIES` (replacing an earlier one of the same dataset)."""
    HUB_COPIES[copy.dataset] = copy
    return copy


def _imagenet_table() -> tuple[list[str], list[str]]:
    """ImageNet's wnids and class names, in class-index order (the asset ``imagenet_classes.tsv``)."""
    from starft_cli.data.checks import asset_lines

    rows = [line.split("\t") for line in asset_lines("imagenet_classes.tsv")[1:]]
    return [r[0] for r in rows], [r[1] for r in rows]


def _imagenet_names() -> list[str]:
    return _imagenet_table()[1]


def _protocol(dataset: str) -> Callable[[], list[str]]:
    """The class names of ``dataset`` under the default protocol (:mod:`starft_cli.data.protocols`), in label
    order: the names the folder layout gets, so that the Hub copy yields the same."""

    def read() -> list[str]:
        from starft_cli.data.protocols import require_protocol

        return list(require_protocol(dataset).classnames)

    return read


def _test(samples: int) -> dict[str, HubSplit]:
    return {"test": HubSplit("test", samples)}


# The registrations. Repository names, split folders, shard counts and the files at the top were read from the
# repositories' pages on huggingface.co (found with the search tool, 2026-12): e.g.
# huggingface.co/datasets/clip-benchmark/wds_imagenet-r/tree/main (classnames.txt, zeroshot_classification_
# templates.txt, test/; "Initial upload" 610f29c), .../wds_imagenet-a/tree/main/test (0..3.tar, nshards.txt;
# 614c3a5), .../wds_vtab-caltech101/tree/main/{train,test} (test 0..2.tar, train 0..1.tar; commit
# 96c3ed2decb80d5fe120fb8a0179f25c82cbee78; viewer: train 2.75k rows, test 6.09k rows), the WILDS copies
# djghosh/wds_wilds-fmow_test (viewer: keys cls, npy [region, year, y, from_source_domain], png; f203cf5) and
# djghosh/wds_wilds-iwildcam_test (test/0..4.tar; 325d568). Only short commit ids were visible for most repositories,
# so ``revision`` stays "main" (the resolved commit is recorded with every result) and ``seen`` keeps the short id.
# The numbers of samples are the benchmarks' published test-set sizes.
for _copy in (
    HubCopy("imagenet", "clip-benchmark/wds_imagenet1k", {"val": HubSplit("test", 50000)}, "same", _imagenet_names),
    HubCopy("imagenet-v2", "clip-benchmark/wds_imagenetv2", _test(10000), "same", _imagenet_names),
    HubCopy("imagenet-sketch", "clip-benchmark/wds_imagenet_sketch", _test(50889), "same", _imagenet_names),
    HubCopy(
        "imagenet-r",
        "clip-benchmark/wds_imagenet-r",
        _test(30000),
        "subset",
        _imagenet_names,
        subset_asset="imagenet_r_wnids.txt",
        seen="610f29c",
        cited="huggingface.co/datasets/clip-benchmark/wds_imagenet-r/tree/main",
    ),
    HubCopy(
        "imagenet-a",
        "clip-benchmark/wds_imagenet-a",
        _test(7500),
        "subset",
        _imagenet_names,
        subset_asset="imagenet_a_wnids.txt",
        seen="614c3a5",
        cited="huggingface.co/datasets/clip-benchmark/wds_imagenet-a/tree/main/test",
    ),
    HubCopy("cifar10", "clip-benchmark/wds_cifar10", _test(10000), "name", _protocol("cifar10")),
    HubCopy("cifar100", "clip-benchmark/wds_cifar100", _test(10000), "same"),
    HubCopy("stl10", "clip-benchmark/wds_stl10", _test(8000), "name", _protocol("stl10")),
    HubCopy("stanford-cars", "clip-benchmark/wds_cars", _test(8041), "same"),
    HubCopy("flowers102", "clip-benchmark/wds_vtab-flowers", _test(6149), "name", _protocol("flowers102")),
    HubCopy(
        "caltech101-vtab",
        "clip-benchmark/wds_vtab-caltech101",
        {"test": HubSplit("test", 6084), "train": HubSplit("train", 3060)},
        "same",
        seen="96c3ed2decb80d5fe120fb8a0179f25c82cbee78",
        cited="huggingface.co/datasets/clip-benchmark/wds_vtab-caltech101/tree/main/test",
    ),
    HubCopy(
        "iwildcam",
        "djghosh/wds_wilds-iwildcam_test",
        _test(42791),
        "same",
        seen="325d568",
        cited="huggingface.co/datasets/djghosh/wds_wilds-iwildcam_test/tree/main/test",
    ),
    HubCopy(
        "fmow",
        "djghosh/wds_wilds-fmow_test",
        _test(22108),
        "name",
        _protocol("fmow"),
        region_column=0,
        seen="f203cf5",
        cited="huggingface.co/datasets/djghosh/wds_wilds-fmow_test (viewer: npy = [region, year, y, ...])",
    ),
):
    register_hub_copy(_copy)


def hub_copy(name: str) -> HubCopy | None:
    """The Hub copy registered for dataset ``name``, or None."""
    return HUB_COPIES.get(name)


def get_hub_copy(name: str) -> HubCopy:
    """The Hub copy of ``name``; a dataset without one is a :class:`DataError` listing those that have one."""
    copy = HUB_COPIES.get(name)
    if copy is None:
        from starft_cli.suggest import did_you_mean

        raise DataError(
            f"dataset '{name}' has no Hub copy",
            did_you_mean(name, HUB_COPIES, then=f"Datasets with one: {', '.join(sorted(HUB_COPIES))}", cutoff=0.5),
        )
    return copy


def hub_split(copy: HubCopy, split: str | None) -> tuple[str, HubSplit]:
    """``(split, its registration)``; ``None`` is the copy's only split, or ``test``. A split the copy lacks is a
    :class:`~starft_cli.errors.SplitError` listing those it has."""
    from starft_cli.errors import SplitError

    if split is None:
        split = "test" if "test" in copy.splits else next(iter(copy.splits))
    if split not in copy.splits:
        raise SplitError(
            f"the Hub copy of '{copy.dataset}' ({copy.repo}) has no split '{split}'",
            f"Use one of {', '.join(copy.splits)}",
        )
    return split, copy.splits[split]


# ----------------------------------------------------------------------------------------------
# The cache (no network)
# ----------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The files of one split of a Hub copy in the local cache."""

    copy: HubCopy
    split: str
    commit: str
    shards: list[Path]
    classnames: Path
    templates: Path | None


def hub_cache() -> str:
    """The Hugging Face cache folder the copies are downloaded into (``HF_HUB_CACHE``, read now)."""
    from starft_cli.pretrained import hub_cache_dir

    return hub_cache_dir()


def _cached(repo: str, filename: str, revision: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    from starft_cli.pretrained import hub_cache_dir

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(), revision=revision, repo_type="dataset")
    return Path(found) if isinstance(found, str) else None


def _commit_of(path: Path) -> str:
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "unknown"


def cached_snapshot(copy: HubCopy, split: str, revision: str | None = None) -> Snapshot | None:
    """The split's files in the Hugging Face cache when every shard is there, else None. Makes no request."""
    _, registered = hub_split(copy, split)
    rev = revision or copy.revision
    nshards_path = _cached(copy.repo, f"{registered.folder}/{NSHARDS}", rev)
    names = _cached(copy.repo, CLASSNAMES, rev)
    if nshards_path is None or names is None:
        return None
    try:
        count = int(nshards_path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    commit = _commit_of(nshards_path)
    shards = [_cached(copy.repo, f"{registered.folder}/{i}.tar", commit) for i in range(count)]
    if any(s is None for s in shards):
        return None
    templates = _cached(copy.repo, TEMPLATES, commit)
    return Snapshot(copy, split, commit, [s for s in shards if s is not None], names, templates)


# ----------------------------------------------------------------------------------------------
# Reading: the same samples, labels, class order and groups as the folder layout
# ----------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    from starft_cli.data.base import name_key

    return name_key(name.replace("_", " "))


def label_map(copy: HubCopy, hub_names: list[str]) -> tuple[list[str], list[int]]:
    """``(class names, mapping)``: the registered dataset's class names, and for each of the copy's labels the
    dataset's label it stands for (see :class:`HubCopy` ``classes``).

    Raises :class:`DataError` when the copy's classes do not fit the protocol (a count or a name that differs)."""
    protocol = copy.protocol() if copy.protocol is not None else list(hub_names)
    where = f"the Hub copy of '{copy.dataset}' ({copy.repo})"
    fix = "The copy follows another protocol: register it as a dataset of its own, or fix the registration"
    if copy.classes == "same":
        if len(protocol) != len(hub_names):
            raise DataError(f"{where} has {len(hub_names)} classes, the dataset {len(protocol)}", fix)
        return protocol, list(range(len(hub_names)))
    if copy.classes == "subset":
        from starft_cli.data.checks import asset_lines

        wnids = _imagenet_table()[0]
        subset = list(asset_lines(str(copy.subset_asset)))
        if len(subset) != len(hub_names):
            raise DataError(f"{where} has {len(hub_names)} classes, the published subset {len(subset)}", fix)
        return protocol, [wnids.index(w) for w in subset]
    if copy.classes == "name":
        positions: dict[str, list[int]] = {}
        for index, name in enumerate(protocol):
            positions.setdefault(_key(name), []).append(index)
        mapping = []
        for name in hub_names:
            found = positions.get(_key(name))
            if not found:
                raise DataError(f"{where} has a class '{name}' that the dataset's class list lacks", fix)
            mapping.append(found.pop(0))  # a repeated name maps to its occurrences in order
        return protocol, mapping
    raise ValueError(f"unknown class mapping '{copy.classes}'")


def load_snapshot(snapshot: Snapshot, templates: str | None = None) -> Any:
    """The registered dataset from a complete cached split (a :class:`~starft_cli.data.shards.ShardImageDataset`).

    Raises :class:`IncompleteDatasetError` when the shards hold another number of samples than registered,
    :class:`~starft_cli.data.shards.ShardError` for a damaged shard, :class:`DataError` for classes that do not
    fit the protocol."""
    from starft_cli.data.shards import ShardError, ShardImageDataset, build_index, read_lines

    copy = snapshot.copy
    registered = copy.splits[snapshot.split]
    try:
        index = build_index(snapshot.shards)
    except ShardError as exc:  # the fix names this dataset's download
        raise ShardError(
            exc.message,
            f"Fetch it again: `starft data download {copy.dataset} --split {snapshot.split} --force`",
        ) from exc
    if len(index) != registered.samples:
        raise IncompleteDatasetError(
            f"the Hub copy of '{copy.dataset}' ({copy.repo}@{snapshot.commit[:12]}, {registered.folder}) holds "
            f"{len(index)} samples, not the {registered.samples} registered: it is not read as the whole dataset",
            f"Fetch it again: `starft data download {copy.dataset} --split {snapshot.split} --force`",
        )
    names, mapping = label_map(copy, read_lines(snapshot.classnames))
    if any(not 0 <= y < len(mapping) for y in index.labels):
        bad = next(y for y in index.labels if not 0 <= y < len(mapping))
        raise DataError(f"the Hub copy of '{copy.dataset}' has label {bad}, outside its {len(mapping)} classes")
    labels = [mapping[y] for y in index.labels]
    groups = group_names = None
    group_kind = "group"
    if copy.region_column is not None:
        from starft_cli.data.wilds import FMOW_REGIONS

        if index.meta is None:
            raise DataError(f"the Hub copy of '{copy.dataset}' has no .npy metadata (the region of each image)")
        groups = [row[copy.region_column] for row in index.meta]
        group_names, group_kind = list(FMOW_REGIONS), "region"
    subset = sorted(set(labels)) if copy.classes == "subset" else None
    from starft_cli.data.registry import get_builder

    info = get_builder(copy.dataset).info
    return ShardImageDataset(
        index=index,
        source={
            "kind": "hub",
            "repo": copy.repo,
            "revision": snapshot.commit,
            "split": registered.folder,
        },
        name=copy.dataset,
        classnames=names,
        labels=labels,
        groups=groups,
        group_names=group_names,
        group_kind=group_kind,
        templates=templates or info.templates,
        class_subset=subset,
        duplicate_classnames_ok=copy.protocol is _imagenet_names,  # ImageNet's standard list repeats two names
    )


def cached_dataset(name: str, split: str | None) -> Any:
    """The dataset ``name`` read from its Hub copy in the local cache, or None when it has no copy or the split is
    not (completely) downloaded. Makes no request.

    Raises what :func:`load_snapshot` raises (a cached copy of the wrong size, a damaged shard)."""
    copy = HUB_COPIES.get(name)
    if copy is None or (split or "test") not in copy.splits:
        return None
    snapshot = cached_snapshot(copy, split or "test")
    return None if snapshot is None else load_snapshot(snapshot)


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What :func:`download` will fetch: the commit and each file's size (bytes), those cached left out."""

    copy: HubCopy
    split: str
    commit: str
    files: dict[str, int]  # filename -> size, still to download
    etags: dict[str, str]
    cached: int  # files already in the cache

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _endpoint() -> str:
    from starft_cli.pretrained import hub_endpoint

    return hub_endpoint()


def _where(copy: HubCopy) -> str:
    return f"{copy.repo} on {_endpoint()}"


def _command(copy: HubCopy, split: str) -> str:
    """The command that fetches ``split`` of ``copy`` (for a ``wds:hf-hub:`` reference: the same one again)."""
    if copy.dataset.startswith("wds:"):
        return f"the command with --data {copy.dataset}"
    return f"`starft data download {copy.dataset} --split {split}`"


def _unavailable(copy: HubCopy, split: str, cause: str) -> DatasetUnavailableError:
    from starft_cli.pretrained import hub_cache_dir, hub_offline

    if hub_offline():
        fix = (
            f"Unset HF_HUB_OFFLINE on a connected machine and run {_command(copy, split)}, or point HF_HOME (or "
            "HF_HUB_CACHE) at a Hugging Face cache that has it"
        )
    else:
        fix = (
            f"Connect and run {_command(copy, split)}, or point HF_HOME (or HF_HUB_CACHE) at a Hugging Face cache "
            "that has it and set HF_HUB_OFFLINE=1"
        )
    return DatasetUnavailableError(
        f"dataset '{copy.dataset}' ({copy.repo}, {split}): not in the local cache ({hub_cache_dir()}), and {cause}",
        fix,
    )


def _call(copy: HubCopy, split: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run one huggingface_hub call, its failures as one-line :class:`DataError` s."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from starft_cli.pretrained import short_error

    again = f"Run {_command(copy, split)} again: it resumes where it stopped"
    try:
        return fn()
    except LocalEntryNotFoundError as exc:
        raise _unavailable(copy, split, f"the download failed ({short_error(exc.__cause__ or exc, 200)})") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        kind = {RevisionNotFoundError: "revision", RemoteEntryNotFoundError: "file"}.get(type(exc), "repository")
        raise DataError(
            f"dataset '{copy.dataset}': {kind} not found on the Hub ({what} in {copy.repo}@{copy.revision} on "
            f"{_endpoint()})",
            "The registration is out of date or the repository is private (log in with `hf auth login`)",
        ) from exc
    except HfHubHTTPError as exc:
        raise DatasetUnavailableError(
            f"download of dataset '{copy.dataset}' ({what} from {_where(copy)}) failed ({short_error(exc)})", again
        ) from exc
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"download of dataset '{copy.dataset}' ({what}) stopped: no space left on the disk of the Hugging Face "
                "cache; the partial file stays as .incomplete and is never read as a shard",
                "Free space (or point HF_HUB_CACHE at a larger disk) and run it again; it resumes",
            ) from exc
        raise DatasetUnavailableError(
            f"download of dataset '{copy.dataset}' ({what} from {_where(copy)}) failed ({short_error(exc)})", again
        ) from exc
    except Exception as exc:  # httpx transport errors are not OSErrors
        raise DatasetUnavailableError(
            f"download of dataset '{copy.dataset}' ({what} from {_where(copy)}) failed "
            f"({type(exc).__name__}: {short_error(exc)})",
            again,
        ) from exc


def _reachable_or_raise(copy: HubCopy, split: str) -> None:
    from starft_cli.pretrained import hub_endpoint, hub_offline, unreachable

    if hub_offline():
        raise _unavailable(copy, split, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    reason = unreachable(hub_endpoint())  # seconds, not huggingface_hub's minute of retries
    if reason is not None:
        raise _unavailable(copy, split, f"{hub_endpoint()} cannot be reached ({reason})")


def plan_download(name: str | HubCopy, split: str | None = None, *, force: bool = False) -> Plan:
    """Ask the Hub (HEAD requests only) what fetching ``split`` of ``name``'s copy involves: the commit the
    revision points to and the size of every file not yet in the cache (all of them with ``force``).

    Raises :class:`DatasetUnavailableError` offline or when the Hub cannot be reached (within seconds),
    :class:`DataError` for an unknown dataset, a dataset without a copy, or a repository/file that is gone."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    from starft_cli.pretrained import hub_cache_dir, hub_endpoint

    copy = name if isinstance(name, HubCopy) else get_hub_copy(name)
    split, registered = hub_split(copy, split)
    _reachable_or_raise(copy, split)
    folder = registered.folder

    def meta(filename: str, revision: str) -> Any:
        url = hf_hub_url(copy.repo, filename, repo_type="dataset", revision=revision, endpoint=hub_endpoint())
        return _call(copy, split, filename, lambda: get_hf_file_metadata(url))

    first = meta(f"{folder}/{NSHARDS}", copy.revision)
    commit = first.commit_hash or copy.revision
    nshards_path = _call(
        copy,
        split,
        NSHARDS,
        lambda: hf_hub_download(
            copy.repo,
            f"{folder}/{NSHARDS}",
            repo_type="dataset",
            revision=copy.revision,  # by name: the cache then records which commit the revision points to
            cache_dir=hub_cache_dir(),
            endpoint=hub_endpoint(),
        ),
    )
    try:
        count = int(Path(nshards_path).read_text(encoding="utf-8").strip())
    except ValueError as exc:
        raise DataError(f"{copy.repo}: {folder}/{NSHARDS} does not hold a number of shards") from exc
    names = [CLASSNAMES, TEMPLATES] + [f"{folder}/{i}.tar" for i in range(count)]
    files: dict[str, int] = {}
    etags: dict[str, str] = {}
    cached = 0
    for filename in names:
        if not force and _cached(copy.repo, filename, commit) is not None:
            cached += 1
            continue
        if filename == TEMPLATES:
            try:
                info = get_hf_file_metadata(
                    hf_hub_url(copy.repo, filename, repo_type="dataset", revision=commit, endpoint=hub_endpoint())
                )
            except Exception:  # the templates file is optional (CLIP_benchmark warns and goes on without it)
                continue
        else:
            info = meta(filename, commit)
        files[filename] = int(info.size or 0)
        etags[filename] = (info.etag or "").strip('"')
    return Plan(copy, split, commit, files, etags, cached)


def _verify(copy: HubCopy, split: str, filename: str, path: Path, etag: str) -> None:
    """Compare a fresh download's sha256 with the Hub's (an LFS file's ETag is its sha256); delete it on a
    mismatch and raise :class:`DatasetChecksumError`."""
    import re

    from starft_cli.paths import sha256_file

    if not re.fullmatch(r"[0-9a-f]{64}", etag):
        return  # a small, non-LFS file: its ETag is a git hash, checked by huggingface_hub's size check
    actual = sha256_file(path)
    if actual != etag:
        real = path.resolve()
        for item in (path, real):
            if item.is_symlink() or item.exists():
                item.unlink()
        raise DatasetChecksumError(
            f"checksum mismatch for {filename} of dataset '{copy.dataset}' ({copy.repo}): the Hub publishes sha256 "
            f"{etag}, the download has {actual}; the file was deleted",
            f"Run {_command(copy, split)} again; if it fails again the copy on the Hub is damaged",
        )


def fetch_snapshot(
    copy: HubCopy,
    split: str,
    *,
    force: bool = False,
    announce: Callable[[Plan], None] | None = None,
    tqdm_class: Any = None,
) -> Snapshot:
    """Fetch ``split`` of ``copy`` into the Hugging Face cache (resuming partial files, verifying each shard's
    sha256); a split complete in the cache is returned without a request when offline or the Hub is unreachable.
    Raises what :func:`download` raises, except the checks of the samples."""
    from huggingface_hub import hf_hub_download

    from starft_cli.pretrained import hub_cache_dir, hub_endpoint, hub_offline, unreachable

    if not force and (hub_offline() or unreachable(hub_endpoint()) is not None):
        snapshot = cached_snapshot(copy, split)
        if snapshot is not None:
            return snapshot
    plan = plan_download(copy, split, force=force)
    if announce is not None:
        announce(plan)
    for filename in plan.files:
        path = _call(
            copy,
            split,
            filename,
            lambda filename=filename: hf_hub_download(
                copy.repo,
                filename,
                repo_type="dataset",
                revision=plan.commit,
                cache_dir=hub_cache_dir(),
                endpoint=hub_endpoint(),
                force_download=force,
                tqdm_class=tqdm_class,
            ),
        )
        _verify(copy, split, filename, Path(path), plan.etags.get(filename, ""))
    snapshot = cached_snapshot(copy, split, plan.commit)
    if snapshot is None:
        raise DataError(f"{copy.repo}: the download finished but its files are not all in the cache")
    return snapshot


def download(
    name: str,
    split: str | None = None,
    *,
    force: bool = False,
    announce: Callable[[Plan], None] | None = None,
    tqdm_class: Any = None,
) -> Any:
    """Fetch ``split`` of ``name``'s Hub copy into the Hugging Face cache (:func:`fetch_snapshot`: resuming partial
    files, verifying each shard's sha256), then read it and check its number of samples. ``announce`` is called
    with the :class:`Plan` before anything is fetched. Returns the dataset (as :func:`load_snapshot`).

    A split already complete in the cache is read without a request when offline or the Hub is unreachable.

    Raises :class:`DatasetUnavailableError` (offline, unreachable, a failed transfer),
    :class:`DatasetChecksumError`, :class:`IncompleteDatasetError`, :class:`DataError`."""
    copy = get_hub_copy(name)
    split, _ = hub_split(copy, split)
    return load_snapshot(fetch_snapshot(copy, split, force=force, announce=announce, tqdm_class=tqdm_class))


def repo_shards(spec: str) -> tuple[Path, dict[str, Any]]:
    """``hf-hub:ORG/REPO[@REVISION]/SPLIT`` (a dataset repository in the Hub's webdataset layout, as ``wds:`` data):
    the split fetched into the Hugging Face cache (as :func:`fetch_snapshot`), as its shard folder and the source
    to record. Raises :class:`DataError` for a malformed reference, and what :func:`fetch_snapshot` raises."""
    body = spec.removeprefix("hf-hub:")
    repo_part, _, split = body.rpartition("/")
    repo, _, revision = repo_part.partition("@")
    if repo.count("/") != 1 or not split:
        raise DataError(
            f"wds:{spec} is not a Hub dataset reference", "Write wds:hf-hub:ORG/REPO/SPLIT (or ORG/REPO@REVISION/SPLIT)"
        )
    copy = HubCopy(f"wds:{spec}", repo, {split: HubSplit(split, 0)}, revision=revision or "main")
    snapshot = fetch_snapshot(copy, split)
    source = {"kind": "hub", "repo": repo, "revision": snapshot.commit, "split": split}
    return snapshot.shards[0].parent, source


def fetch_missing(
    wanted: list[tuple[str, str | None]],
    data_root: str | Path | None,
    *,
    announce: Callable[[Plan], None] | None = None,
) -> list[str]:
    """For ``eval --download`` / ``finetune --download``: fetch the Hub copy of every ``(dataset, split)`` in
    ``wanted`` that has one and is not laid out under ``data_root`` (``None`` split: the dataset's default).
    Returns one line per dataset that could not be fetched (what and why); those are then reported missing by the
    evaluation's plan, as absent datasets are."""
    from starft_cli.data.registry import Missing, get_builder, is_generic, resolve

    failed: list[str] = []
    for name, split in wanted:
        if is_generic(name) or name not in HUB_COPIES:
            continue
        split = split or get_builder(name).info.default_split
        if split not in HUB_COPIES[name].splits:
            continue
        if data_root is not None:
            try:
                present = not isinstance(resolve(name, data_root, split), Missing)
            except DataError:
                present = False
            if present:
                continue
        try:
            download(name, split, announce=announce)
        except DataError as exc:
            failed.append(f"{name}: {exc.one_line()}")
    return failed


def registry_source(builder: Any, split: str) -> Any:
    """The registry's hook (``starft_cli.data.registry.SOURCES``): ``builder``'s split read from its Hub copy in
    the local cache; None when it has none there; a ``Missing`` when the cached copy cannot be read as the whole
    dataset, or when a Hub-only dataset is not downloaded."""
    from starft_cli.data.registry import Missing

    info = builder.info
    try:
        ds = cached_dataset(info.name, split)
    except DataError as exc:
        return Missing(info.name, Path(hub_cache()), split, (exc.one_line(),), info.layout, info.source)
    if ds is None and getattr(builder, "hub_only", False):  # no folder layout to fall back on
        problem = f"not downloaded (run `starft data download {info.name} --split {split}`)"
        return Missing(info.name, Path(hub_cache()), split, (problem,), info.layout, info.source)
    return ds


def _register() -> None:
    from starft_cli.data.registry import SOURCES
    from starft_cli.data.shards import REMOTE

    if registry_source not in SOURCES:
        SOURCES.append(registry_source)
    REMOTE["hf-hub:"] = repo_shards


_register()
