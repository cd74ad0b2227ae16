"""The model zoo: named models from a validated manifest, verified downloads, publishing.

Importable without torch. ``starft_cli.models`` calls ``find_entry``, ``entry_names`` and ``resolve``.
"""

from __future__ import annotations

from starft_cli.zoo.hub import Resolved, VerifyResult, cached_path, check_entry, fetch, remove, resolve, verify
from starft_cli.zoo.manifest import (
    KINDS,
    Metric,
    Source,
    ZooEntry,
    load_all,
    parse_manifest,
    parse_source,
    shipped_manifest_path,
    user_manifest_path,
    validate_entry,
)

__all__ = [
    "KINDS",
    "Metric",
    "Resolved",
    "Source",
    "VerifyResult",
    "ZooEntry",
    "cached_path",
    "check_entry",
    "entries",
    "entry_names",
    "fetch",
    "find_entry",
    "get_entry",
    "load_all",
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


def find_entry(name: str) -> ZooEntry | None:
    """The entry called ``name``, or None."""
    return load_all().get(name)


def entry_names() -> list[str]:
    return sorted(load_all())


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name raises ``ModelNotFoundError`` with close matches."""
    from starft_cli.errors import ModelNotFoundError
    from starft_cli.suggest import did_you_mean

    found = load_all()
    if name in found:
        return found[name]
    raise ModelNotFoundError(f"unknown zoo model '{name}'", did_you_mean(name, found, then="See `starft zoo list`"))
