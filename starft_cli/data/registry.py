"""The dataset registry: ``@register_dataset`` and name resolution with helpful misses.

One registry serves training (``starft finetune --data``) and evaluation (``starft eval``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starft_cli.errors import DataError

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
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a user needs to know about a registered dataset."""

    name: str
    title: str
    folder: str  # default folder under --data-root
    layout: str  # the on-disk layout, as documentation
    source: str  # where to obtain it
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    templates: str = "imagenet80"


class DatasetBuilder(Protocol):
    info: DatasetInfo

    def build(self, root: Path, split: str) -> Any:  # -> ImageDataset
        ...

    def check(self, root: Path) -> Any:  # -> CheckReport
        ...


_REGISTRY: dict[str, DatasetBuilder] = {}
_LOADED = False


def register_dataset(name: str, **info: Any) -> Callable[[type], type]:
    """Class decorator: register a builder class (``build(root, split)``, ``check(root)``) under ``name``."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"dataset '{name}' registered twice")
        builder = cls()
        builder.info = DatasetInfo(name=name, **info)
        _REGISTRY[name] = builder
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
    """The builder registered as ``name``; an unknown name lists close matches."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise DataError(
        f"unknown dataset '{name}'",
        hint + "`starft data list` shows them all; folder:PATH and csv:PATH name your own data",
    )


def dataset_root(name: str, data_root: str | Path | None) -> Path:
    """Where a registered dataset lives: ``DATA_ROOT/<folder>``, or DATA_ROOT itself if it is that folder."""
    builder = get_builder(name)
    if data_root is None and getattr(builder, "generated", False):
        return builder.default_root()  # a generated dataset lives in the cache
    if data_root is None:
        raise DataError(
            f"dataset '{name}' needs `data_root`",
            f"Point it at the folder holding {builder.info.folder}/",
            param="data_root",
        )
    root = Path(data_root).expanduser()
    nested = root / builder.info.folder
    if nested.is_dir() or root.name != builder.info.folder:
        return nested
    return root


def load_dataset(
    ref: str,
    data_root: str | Path | None = None,
    split: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    classnames_file: str | Path | None = None,
) -> Any:
    """Build a dataset from a registered name, ``folder:PATH`` or ``csv:PATH``."""
    from starft_cli.data import generic

    if ref.startswith("folder:"):
        ds = generic.load_folder(Path(ref[len("folder:") :]).expanduser(), split, classnames_file)
    elif ref.startswith("csv:"):
        ds = generic.load_csv(Path(ref[len("csv:") :]).expanduser(), classnames_file)
    else:
        builder = get_builder(ref)
        split = split or builder.info.default_split
        if split not in builder.info.splits:
            raise DataError(f"dataset '{ref}' has no split '{split}'", f"Use one of {', '.join(builder.info.splits)}")
        root = dataset_root(ref, data_root)
        if getattr(builder, "generated", False):
            builder.ensure(root)  # generated datasets are made on first use
        report = builder.check(root)
        if not report.ok:
            more = len(report.problems) - 1
            raise DataError(
                f"dataset '{ref}' at {root} is not laid out right: {report.problems[0]}"
                + (f" (and {more} more problem(s))" if more else ""),
                f"Run `starft data check {ref} --data-root {data_root}` for details",
            )
        ds = builder.build(root, split)
    return ds.with_transform(transform) if transform is not None else ds
