"""Evaluation protocols: which class names and zero-shot templates each registered dataset is prompted with, and
where they come from.

A protocol is a folder of data files, ``<protocol>/<dataset>.json``, one per dataset it defines:

``source``          where the names and templates come from (shown in results and the leaderboard footnote)
``classnames``      the names in the dataset's label order (absent: the dataset's own names)
``keys``            optional: the dataset's own class identifiers (folder names, metadata names) in the same order,
                    for datasets whose loader numbers classes by what is present on disk
``templates``       a list of templates, or the name of a shipped template set (``starft_cli/prompts/templates``)
``shared_prompts``  pairs of class indices the source itself names alike (a dataset's own metadata may repeat a
                    name; user-given names may not): only these collisions are accepted
``split``           optional: the split rule of a dataset whose splits the protocol defines (Caltech-101)
``notes``           lines worth knowing

Protocols: ``reference`` (the default: the StarFT authors' code wherever it evaluates the dataset, CLIP_benchmark's
otherwise, starft's own where neither does) and ``clip-benchmark`` (CLIP_benchmark's, for parity with that tool; a
dataset it does not define falls back to ``reference`` and says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from starft_cli.errors import DataError, UsageError

DEFAULT_PROTOCOL = "reference"
PROTOCOLS = ("reference", "clip-benchmark")


@dataclass(frozen=True)
class ProtocolEntry:
    """One dataset's class names and templates under one protocol (see the module docstring for the fields).
    ``protocol`` is the protocol whose file was used; ``asked`` the one asked for (they differ on a fallback)."""

    dataset: str
    protocol: str
    asked: str
    source: str
    classnames: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    templates: tuple[str, ...] | str = "imagenet80"
    shared_prompts: tuple[tuple[int, int], ...] = ()
    split: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def templates_name(self) -> str:
        """How results name the templates: the shipped set's name, or ``<protocol>:<dataset>`` for a list."""
        return self.templates if isinstance(self.templates, str) else f"{self.protocol}:{self.dataset}"

    def template_list(self) -> list[str]:
        """The templates, validated (one slot each; see :func:`starft_cli.prompts.parse_templates`)."""
        from starft_cli.prompts import load_templates, parse_templates

        if isinstance(self.templates, str):
            return load_templates(self.templates)
        return parse_templates(list(self.templates), f"protocol {self.protocol}/{self.dataset}")

    def name_for(self, index: int) -> str:
        """The name of class ``index`` (label order); :class:`DataError` past the list."""
        names = self.classnames or ()
        if not 0 <= index < len(names):
            raise DataError(
                f"protocol '{self.protocol}' names {len(names)} classes of {self.dataset}; its data have class {index}",
                "Check that the dataset is the standard release",
            )
        return names[index]

    def name_for_key(self, key: str) -> str | None:
        """The name of the class the dataset itself calls ``key`` (a folder or metadata name); None if unknown."""
        if self.keys is None or self.classnames is None:
            return None
        try:
            return self.classnames[self.keys.index(key)]
        except ValueError:
            return None

    def names_for(self, count: int) -> list[str]:
        """The first ``count`` names (a dataset whose labels run 0..count-1); :class:`DataError` when the protocol
        names fewer classes."""
        return [self.name_for(i) for i in range(count)]

    def check_collisions(self, names: list[str]) -> bool:
        """Whether ``names`` may repeat a name: every pair of classes that read alike
        (:func:`~starft_cli.data.base.classname_collisions`) is one the source declares in ``shared_prompts``.
        An undeclared pair is a :class:`DataError`; a declared one is fine (the dataset's own metadata)."""
        from starft_cli.data.base import classname_collisions

        declared = set(self.shared_prompts)
        for a, b in classname_collisions(names):
            if (a, b) not in declared:
                raise DataError(
                    f"{self.dataset}: classes {a} and {b} are named '{names[a]}' and '{names[b]}' under protocol "
                    f"'{self.protocol}', which does not declare them as sharing a prompt",
                    "Fix the protocol file's class names or list the pair in its shared_prompts",
                )
        return bool(declared)

    def shared_note(self) -> str | None:
        """One line naming the classes that share a prompt, or None."""
        if not self.shared_prompts or self.classnames is None:
            return None
        pairs = ", ".join(f"{a}/{b} '{self.classnames[a]}'" for a, b in self.shared_prompts)
        count = len(self.shared_prompts)
        return (
            f"{self.dataset}: {count} pair(s) of classes share one name and so one prompt under protocol "
            f"'{self.protocol}' ({pairs}); each pair gets one embedding, as in the source"
        )

    def describe(self) -> str:
        """One line: the dataset, the protocol used and its source (and the fallback, if any)."""
        fallback = "" if self.asked == self.protocol else f" ('{self.asked}' does not define {self.dataset})"
        return f"{self.dataset}: protocol '{self.protocol}'{fallback}: {self.source}"


def check_protocol(name: str) -> str:
    """``name`` if it is a known protocol, else a :class:`UsageError` listing them."""
    if name not in PROTOCOLS:
        from starft_cli.suggest import did_you_mean

        raise UsageError(
            f"unknown protocol '{name}'", did_you_mean(name, PROTOCOLS, then=f"Use one of {', '.join(PROTOCOLS)}")
        )
    return name


@cache
def _read(protocol: str, dataset: str) -> dict[str, Any] | None:
    folder = resources.files("starft_cli.data.protocols").joinpath(protocol)
    resource = folder.joinpath(f"{dataset}.json")
    if not resource.is_file():
        return None
    return json.loads(resource.read_text(encoding="utf-8"))


def protocol_datasets(protocol: str) -> list[str]:
    """The datasets ``protocol`` has a file for."""
    folder = resources.files("starft_cli.data.protocols").joinpath(check_protocol(protocol))
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def get_protocol(dataset: str, protocol: str = DEFAULT_PROTOCOL) -> ProtocolEntry | None:
    """``dataset``'s entry under ``protocol``; a protocol without a file for it falls back to the default protocol
    (``asked`` then says which was asked for). None for a dataset no protocol defines (``folder:``/``csv:`` data)."""
    check_protocol(protocol)
    used = protocol
    data = _read(protocol, dataset)
    if data is None and protocol != DEFAULT_PROTOCOL:
        used, data = DEFAULT_PROTOCOL, _read(DEFAULT_PROTOCOL, dataset)
    if data is None:
        return None
    templates = data.get("templates", "imagenet80")
    return ProtocolEntry(
        dataset=dataset,
        protocol=used,
        asked=protocol,
        source=data["source"],
        classnames=None if "classnames" not in data else tuple(data["classnames"]),
        keys=None if "keys" not in data else tuple(data["keys"]),
        templates=templates if isinstance(templates, str) else tuple(templates),
        shared_prompts=tuple((int(a), int(b)) for a, b in data.get("shared_prompts", ())),
        split=data.get("split"),
        notes=tuple(data.get("notes", ())),
    )


def require_protocol(dataset: str, protocol: str = DEFAULT_PROTOCOL) -> ProtocolEntry:
    """:func:`get_protocol` for a registered dataset that must have one (a missing file is a packaging error)."""
    entry = get_protocol(dataset, protocol)
    if entry is None:
        raise DataError(f"no protocol file for dataset '{dataset}'", "Reinstall starft; its data files are missing")
    return entry


def attach_protocol(ds: Any, entry: ProtocolEntry, index: list[int]) -> Any:
    """Mark a built dataset as named by ``entry``: ``ds.protocol`` (the protocol used), ``ds.protocol_index`` (for
    each of its classes, the class's position in the protocol's label-order list, so that another protocol can
    rename it). Returns ``ds``."""
    ds.protocol = entry.protocol
    ds.protocol_index = list(index)
    return ds


def apply_protocol(ds: Any, protocol: str) -> tuple[Any, ProtocolEntry | None]:
    """``ds`` with the class names of ``protocol`` (a shallow copy when they change) and its protocol entry; the
    dataset itself when no protocol defines it (``folder:``/``csv:`` data: entry None).

    The new names are looked up through ``ds.protocol_index`` (set by the builder) or, without one, by position when
    the protocol names exactly as many classes; the copy keeps the built names as ``built_classnames`` (a trained
    head's rows are matched by them). A protocol whose names read alike where it does not declare so
    (``shared_prompts``) is a :class:`DataError`."""
    import copy

    entry = get_protocol(ds.name, protocol)
    if entry is None:
        return ds, None
    names = list(ds.classnames)
    if entry.classnames is not None:
        index = getattr(ds, "protocol_index", None)
        if index is not None:
            names = [entry.name_for(i) for i in index]
        elif len(entry.classnames) == len(names):
            names = list(entry.classnames)
        entry.check_collisions(names)  # the dataset's own names were checked when it was built
    if names == list(ds.classnames) and getattr(ds, "protocol", None) == entry.protocol:
        return ds, entry
    other = copy.copy(ds)
    other.classnames = names
    other.protocol = entry.protocol
    # the names the dataset was built with (the default protocol's): what a model fine-tuned on it calls its classes
    other.built_classnames = getattr(ds, "built_classnames", list(ds.classnames))
    return other, entry


def summary_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    """Leaderboard footnote lines from ``(dataset, protocol, source)`` rows: one line per protocol, its datasets
    grouped by where their names and templates come from (the source up to its first parenthesis)."""
    by_protocol: dict[str, dict[str, list[str]]] = {}
    for dataset, protocol, source in rows:
        family = str(source).split(" (", 1)[0]
        datasets = by_protocol.setdefault(str(protocol), {}).setdefault(family, [])
        if dataset not in datasets:
            datasets.append(str(dataset))
    return [
        f"class names and templates: protocol '{protocol}' ("
        + "; ".join(f"{', '.join(sorted(ds))}: {family}" for family, ds in families.items())
        + "; each record's protocol_source gives the files)"
        for protocol, families in by_protocol.items()
    ]
