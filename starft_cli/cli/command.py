"""How a CLI module declares its commands, so that ``cli/app.py`` registers them all the same way.

Every module listed in :data:`starft_cli.cli.app.CLI_MODULES` ends with ``COMMANDS``, a list of :class:`Command`:
a function becomes ``starft NAME``, a Typer app becomes the group ``starft NAME ...`` (its sub-commands are
``@app.command`` functions in that module). Adding a command to an existing module is one entry there; a new
module is also one line in ``CLI_MODULES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer


@dataclass(frozen=True)
class Command:
    """``starft NAME``: a command function (its ``help`` is the one-line help of the command list and of
    ``--help``; default: the function's docstring) or a Typer app of sub-commands (whose own ``help`` is used)."""

    name: str
    target: Callable[..., Any] | typer.Typer
    help: str | None = None

    def register(self, app: typer.Typer) -> None:
        """Add this command (or group) to ``app``."""
        extra = {"help": self.help} if self.help is not None else {}
        if isinstance(self.target, typer.Typer):
            app.add_typer(self.target, name=self.name, **extra)
        else:
            app.command(self.name, **extra)(self.target)
