"""Datasets: one registry for training and evaluation, one entry point (see :mod:`starft_cli.data.registry`).

``resolve(ref, data_root, split, classnames_file)`` returns the dataset or a :class:`Missing` report;
``load_dataset`` is the same for callers that need the data (a missing dataset raises). Imported lazily.
"""

from __future__ import annotations

from typing import Any

_ENTRY = ("resolve", "Missing", "load_dataset", "list_datasets", "register_dataset")


def __getattr__(name: str) -> Any:
    if name in _ENTRY:
        from starft_cli.data import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'starft_cli.data' has no attribute '{name}'")
