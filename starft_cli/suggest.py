"""The "did you mean" hint of every unknown-name error (models, zoo entries, tags, datasets, suites, settings).

Standard library only: any module (a config parser, the zoo manifest) imports it without loading torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, known: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The at most ``n`` names of ``known`` closest to ``name``, best first, whose similarity (difflib's ratio,
    0..1) is at least ``cutoff``."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)


def did_you_mean(
    name: str,
    known: Iterable[str],
    *,
    then: str = "",
    n: int = 3,
    cutoff: float = 0.6,
    quote: bool = False,
) -> str:
    """A hint for an unknown ``name``: ``"Did you mean a, b?"`` naming the :func:`close_matches` among ``known``
    (each in single quotes with ``quote``), followed by ``then`` (the rest of the hint, e.g. where to look the
    names up) after a space. With no close match it is ``then`` alone (``""`` when ``then`` is empty, so that
    ``did_you_mean(...) or "See ..."`` gives a fallback).

    >>> did_you_mean("cifar1O", ["cifar10", "cifar100", "mnist"], then="See `starft data list`")
    'Did you mean cifar10, cifar100? See `starft data list`'
    """
    close = close_matches(name, known, n=n, cutoff=cutoff)
    if not close:
        return then
    names = ", ".join(f"'{c}'" if quote else c for c in close)
    return f"Did you mean {names}?" + (f" {then}" if then else "")
