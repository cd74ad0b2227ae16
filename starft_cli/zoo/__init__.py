"""The model zoo: named models from a validated manifest, verified downloads, publishing.

Importable without torch. ``starft_cli.models`` calls ``find_entry``, ``entry_names`` and ``resolve``.
"""

from __future__ import annotations

from starft_cli.zoo.hub import Resolved, VerifyResult, cached_path, check_entry, fetch, remove, resolve, verify
from starft_cli.zoo.manifest import (
    KINDS,
    BrokenEntry,
    Metric,
    Source,
    ZooEntry,
    load_all,
    load_zoo,
    parse_manifest,
    parse_source,
    shipped_manifest_path,
    user_manifest_path,
    validate_entry,
)

__all__ = [
    "KINDS",
    "BrokenEntry",
    "Metric",
    "Resolved",
    "Source",
    "VerifyResult",
    "ZooEntry",
    "broken_entries",
    "cached_path",
    "check_entry",
    "entries",
    "entry_names",
    "fetch",
    "find_entry",
    "get_entry",
    "load_all",
    "load_zoo",
    "parse_manifest",
    "parse_source",
    "remove",
    "resolve",
    "shipped_manifest_path",
    "user_manifest_path",
    "validate_entry",
    "verify",
]


def entries() -> dict[str, ZooEntry]:
    """All entries of the merged manifests (shipped, user overlay, ``$STARFT_ZOO``), by name."""
    return load_all()


def broken_entries() -> dict[str, BrokenEntry]:
    """The entries of the manifests that fail validation, by name, each with its problem."""
    return load_zoo()[1]


def find_entry(name: str) -> ZooEntry | None:
    """The entry called ``name``, or None. A broken entry of that name (and no valid one) raises its problem
    (:meth:`BrokenEntry.error`): using it says what is wrong, not that it does not exist."""
    found, broken = load_zoo()
    if name in found:
        return found[name]
    if name in broken:
        raise broken[name].error()
    return None


def entry_names() -> list[str]:
    return sorted(load_all())


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name raises ``ModelNotFoundError`` with close matches, a broken one
    ``ZooError`` with its problem."""
    from starft_cli.errors import ModelNotFoundError
    from starft_cli.suggest import did_you_mean

    found = find_entry(name)
    if found is not None:
        return found
    raise ModelNotFoundError(
        f"unknown zoo model '{name}'", did_you_mean(name, entry_names(), then="See `starft zoo list`")
    )
