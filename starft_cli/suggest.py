"""One "did you mean" hint for every unknown name (models, datasets, suites, methods, settings)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"Did you mean 'X'?"`` for the closest of ``known`` to ``name``, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"Did you mean '{close[0]}'?" if close else ""
