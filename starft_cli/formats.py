"""The output formats of every command's ``--format`` (declared once; each command offers a subset)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from starft_cli.errors import UsageError


class OutputFormat(StrEnum):
    """What a command prints: an aligned ``table`` for a terminal, a GitHub markdown table (``md``), ``csv`` or
    strict ``json``."""

    table = "table"
    md = "md"
    csv = "csv"
    json = "json"

    @classmethod
    def choices(cls, *formats: str) -> type[StrEnum]:
        """An enum of some of the formats, in the order given (same names and values), for a command that offers
        only those: as the type of a Typer option, click lists exactly them in the help and refuses the others.
        Its members compare equal to the :class:`OutputFormat` of the same value. An unknown format raises
        ``ValueError``."""
        members = [cls(value) for value in formats]
        return StrEnum(f"OutputFormat[{'|'.join(formats)}]", {m.name: m.value for m in members})  # type: ignore[return-value]


def parse_format(value: str, choices: Iterable[str] = tuple(OutputFormat)) -> OutputFormat:
    """``value`` as an :class:`OutputFormat`, when it is one of ``choices`` (an :meth:`OutputFormat.choices` enum, or
    format names; default: all of them). Anything else raises :class:`~starft_cli.errors.UsageError` (``unknown
    format 'xml'``) naming the choices."""
    allowed = [str(c) for c in choices]
    if value not in allowed:
        raise UsageError(f"unknown format '{value}'", f"Use one of {', '.join(allowed)}")
    return OutputFormat(value)
