"""The dataset registry (``@register_dataset``) and the data layer's one entry point, :func:`resolve`.

One registry serves training (``starft finetune --data``), evaluation (``starft eval``) and ``starft data``.
A dataset's registration says everything about it that is not code: its folder, layout, source, splits,
default split, default zero-shot templates, whether it is generated locally, whether its check can be narrowed
to some splits, and how to download it. Builders read it (``self.info``) instead of restating it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from starft_cli.errors import DataError, DataRootError, SplitError
from starft_cli.suggest import did_you_mean

if TYPE_CHECKING:
    from starft_cli.data.base import CheckReport, ImageDataset
    from starft_cli.images import ImageListing

logger = logging.getLogger(__name__)

# Modules that register datasets; imported on first use of the registry.
DATASET_MODULES = (
    "starft_cli.data.imagenet",
    "starft_cli.data.generic",
    "starft_cli.data.imagenet_variants",
    "starft_cli.data.groups",
    "starft_cli.data.cifar",
    "starft_cli.data.transfer",
    "starft_cli.data.wilds",
    "starft_cli.data.digits",
    "starft_cli.data.sources.variants",
)

GENERIC_PREFIXES = ("folder:", "csv:", "wds:")


@dataclass(frozen=True)
class DatasetInfo:
    """What a user needs to know about a registered dataset, and what the data layer needs to handle it."""

    name: str
    title: str
    folder: str  # default folder under --data-root
    layout: str  # the on-disk layout, as documentation
    source: str  # where to obtain it
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    templates: str = "imagenet80"  # the default zero-shot templates of its datasets (``ImageDataset.templates``)
    generated: bool = False  # made locally on first use: the builder has ``default_root()`` and ``ensure(root)``
    check_splits: bool = False  # the builder's ``check(root, splits=...)`` can check only the splits asked for
    download: Callable[[Path], None] | None = field(default=None, compare=False)  # fetch it into a data root


class DatasetBuilder(Protocol):
    info: DatasetInfo

    def build(self, root: Path, split: str) -> Any:  # -> ImageDataset
        ...

    def check(self, root: Path) -> Any:  # -> CheckReport
        ...


class Builder:
    """A convenient base for registered builders: datasets and check reports named as registered, with the
    registration's templates."""

    info: ClassVar[DatasetInfo]

    def dataset(self, kind: type[ImageDataset], listing: ImageListing | None = None, **fields: Any) -> Any:
        """``kind(name=info.name, templates=info.templates, **fields)``; ``listing`` (the walk that found its image
        files) says what was left out (``left_out``)."""
        ds = kind(name=self.info.name, templates=self.info.templates, **fields)
        if listing is not None:
            ds.left_out = listing.notes()
        return ds

    def report(self, root: Path) -> CheckReport:
        """An empty :class:`~starft_cli.data.base.CheckReport` of this dataset at ``root``."""
        from starft_cli.data.base import CheckReport

        return CheckReport(name=self.info.name, root=root)


_REGISTRY: dict[str, DatasetBuilder] = {}
_LOADED = False


def register_dataset(name: str, **info: Any) -> Callable[[type], type]:
    """Class decorator: register a builder class (``build(root, split)``, ``check(root)``) under ``name``. The
    keywords are the fields of :class:`DatasetInfo`; the class gets it as ``info``."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"dataset '{name}' registered twice")
        cls.info = DatasetInfo(name=name, **info)  # type: ignore[attr-defined]
        _REGISTRY[name] = cls()
        return cls

    return decorator


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in DATASET_MODULES:
            importlib.import_module(module)


def list_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_builder(name: str) -> DatasetBuilder:
    """The builder registered as ``name``; an unknown name is a :class:`DataError` listing close matches."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise DataError(
        f"unknown dataset '{name}'",
        did_you_mean(
            name,
            _REGISTRY,
            then="`starft data list` shows them all; folder:PATH and csv:PATH name your own data",
            cutoff=0.5,
        ),
    )


def is_generic(ref: str) -> bool:
    """Whether ``ref`` names the user's own data (``folder:PATH``, ``csv:PATH``, ``wds:SHARDS``) rather than a
    registered name."""
    return ref.startswith(GENERIC_PREFIXES)


def root_for(builder: DatasetBuilder, data_root: str | Path | None) -> Path:
    """Where ``builder``'s dataset lives: ``DATA_ROOT/<folder>``, or DATA_ROOT itself if it is that folder; a
    generated dataset without a data root lives in the cache. No data root otherwise: :class:`DataRootError`."""
    info = builder.info
    if data_root is None and info.generated:
        return builder.default_root()  # type: ignore[attr-defined]
    if data_root is None:
        raise DataRootError(
            f"dataset '{info.name}' needs `data_root`",
            f"Point it at the folder holding {info.folder}/",
            param="data_root",
        )
    root = Path(data_root).expanduser()
    nested = root / info.folder
    if nested.is_dir() or root.name != info.folder:
        return nested
    return root


def dataset_root(name: str, data_root: str | Path | None) -> Path:
    """:func:`root_for` the dataset registered as ``name``."""
    return root_for(get_builder(name), data_root)


def check_split(info: DatasetInfo, split: str | None) -> str:
    """``split``, or the default split when None; one the dataset lacks is a :class:`SplitError` listing its
    splits."""
    split = split or info.default_split
    if split not in info.splits:
        raise SplitError(f"dataset '{info.name}' has no split '{split}'", f"Use one of {', '.join(info.splits)}")
    return split


def check_layout(
    builder: DatasetBuilder, root: Path, splits: tuple[str, ...] | None = None, generate: bool = True
) -> CheckReport:
    """``builder``'s layout check at ``root``; a missing ``root`` is one problem. A generated dataset is generated
    first (again when damaged) when ``generate``; otherwise (``starft data check``, which must not write) an absent
    copy is the problem "not generated". ``splits`` narrows the check where the registration says it can
    (``check_splits``: ImageNet, whose evaluation need not scan the training set)."""
    from starft_cli.data.base import CheckReport

    info = builder.info
    if info.generated and generate:
        builder.ensure(root)  # type: ignore[attr-defined]
    if not root.exists():
        problem = f"not generated at {root}" if info.generated else f"missing folder {root}"
        return CheckReport(name=info.name, root=root, problems=[problem])
    if splits is not None and info.check_splits:
        return builder.check(root, splits=splits)  # type: ignore[call-arg]
    return builder.check(root)


@dataclass(frozen=True)
class Missing:
    """A registered dataset that :func:`resolve` found absent or broken: what is wrong and how to get it."""

    name: str
    root: Path  # where it was looked for
    split: str
    problems: tuple[str, ...]  # every problem found; the first says what is absent
    layout: str
    source: str
    data_root: Path | None = None  # the data root given (None: a generated dataset's cache folder)

    @property
    def problem(self) -> str:
        return self.problems[0]

    @property
    def hint(self) -> str:
        """How to get it and lay it out, and the command that shows the details."""
        where = self.data_root if self.data_root is not None else "DATA_ROOT"
        return (
            f"Run `starft data check {self.name} --data-root {where}` for details. Layout: {self.layout}. "
            f"Source: {self.source}"
        )

    def line(self) -> str:
        """One line: the dataset, its first problem, its layout and source."""
        return f"{self.name}: {self.problem}. Layout: {self.layout}. Source: {self.source}"

    def short(self) -> str:
        """``name (first problem)``."""
        return f"{self.name} ({self.problem})"

    def error(self) -> DataError:
        """The :class:`DataError` to raise when the dataset is required."""
        more = len(self.problems) - 1
        return DataError(
            f"dataset '{self.name}' at {self.root} is not laid out right: {self.problem}"
            + (f" (and {more} more problem(s))" if more else ""),
            self.hint,
        )


def load_generic(ref: str, split: str | None = None, classnames_file: str | Path | None = None) -> ImageDataset:
    """``folder:PATH``, ``csv:PATH`` or ``wds:SHARDS`` data, loaded (what :func:`resolve` does for them, without its
    warning lines: ``starft data check`` reports them as notes). A folder's split follows the one rule for split
    folders, :func:`starft_cli.data.generic.folder_split`; a CSV is the split asked for (default ``test``).

    Raises :class:`DataError` (:class:`SplitError` for a split the folder lacks) when the data do not load."""
    from starft_cli.data import generic

    prefix, _, rest = ref.partition(":")
    if not rest.strip():  # an empty path would be the current folder
        raise DataError(f"'{ref}' names no path", f"Write {prefix}:PATH", param="data")
    path = Path(rest).expanduser()
    if ref.startswith("wds:"):
        from starft_cli.data.shards import load_shards

        ds = load_shards(rest, classnames_file)
        ds.split = split or generic.DEFAULT_SPLIT
        return ds
    if ref.startswith("folder:"):
        return generic.load_folder(path, split, classnames_file)
    ds = generic.load_csv(path, classnames_file)
    ds.split = split or generic.DEFAULT_SPLIT
    return ds


def resolve(
    ref: str,
    data_root: str | Path | None = None,
    split: str | None = None,
    classnames_file: str | Path | None = None,
) -> ImageDataset | Missing:
    """The data layer's entry point: the dataset ``ref`` names, built, or a :class:`Missing` report.

    ``ref`` is a registered name (under ``data_root``), ``folder:PATH`` or ``csv:PATH`` (``classnames_file`` names
    their classes). ``split`` defaults to the dataset's default split (``test`` for ``folder:``/``csv:``); the
    returned dataset has it as ``split``. A registered dataset is looked up once, its split checked, its layout
    checked (a generated one is generated on first use), then built; a bad layout, a build error or an empty
    split is a :class:`Missing`.

    Raises :class:`DataError` for an unknown name and for ``folder:``/``csv:`` data that do not load,
    :class:`SplitError` for a split the dataset lacks, :class:`DataRootError` when a registered, non-generated
    dataset has no ``data_root``.
    """
    if is_generic(ref):
        ds = load_generic(ref, split, classnames_file)
        _log_left_out(ds)
        return ds
    builder = get_builder(ref)
    info = builder.info
    split = check_split(info, split)
    if data_root is None and not info.generated:
        hub = _hub_source(builder, split)  # a complete Hub copy in the cache stands in for a data root
        if hub is not None:
            return hub
    root = root_for(builder, data_root)
    given = None if data_root is None else Path(data_root).expanduser()

    def missing(*problems: str) -> Missing:
        return Missing(ref, root, split, tuple(problems), info.layout, info.source, given)

    report = check_layout(builder, root, (split,))
    if not report.ok:
        hub = _hub_source(builder, split)
        if isinstance(hub, Missing):
            return Missing(ref, root, split, hub.problems + tuple(report.problems), info.layout, info.source, given)
        return hub if hub is not None else missing(*report.problems)
    try:
        ds = builder.build(root, split)
    except DataError as exc:
        return missing(exc.message)
    if len(ds) == 0:
        return missing(f"the '{split}' split holds no images")
    ds.split = split
    _log_left_out(ds)
    return ds


def _log_left_out(ds: ImageDataset) -> None:
    """One warning per kind of file that listing the dataset's images left out (macOS ``._*`` files, repeated
    symlinked folders): the count, never silence."""
    for line in ds.left_out:
        logger.warning("%s (%s split): %s", ds.name, ds.split, line)


# Other sources of a registered dataset than its folder layout (:mod:`starft_cli.data.sources`): each takes the
# builder and a split and returns the dataset, a Missing (a copy that cannot be read as the whole dataset) or None.
SOURCES: list[Callable[[Any, str], Any]] = []


def _hub_source(builder: DatasetBuilder, split: str) -> ImageDataset | Missing | None:
    """``builder``'s split from the first other source that has it (the Hub copy in the local cache), or None."""
    for source in SOURCES:
        found = source(builder, split)
        if found is not None:
            if not isinstance(found, Missing):
                found.split = split
            return found
    return None


def load_dataset(
    ref: str,
    data_root: str | Path | None = None,
    split: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    classnames_file: str | Path | None = None,
) -> ImageDataset:
    """:func:`resolve`, for callers that need the data: a :class:`Missing` dataset raises its
    :meth:`Missing.error`. With ``transform``, the dataset applies it to every image."""
    ds = resolve(ref, data_root, split, classnames_file)
    if isinstance(ds, Missing):
        raise ds.error()
    return ds.with_transform(transform) if transform is not None else ds
