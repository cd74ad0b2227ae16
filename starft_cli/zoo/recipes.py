"""Recipes: models starft builds on this machine instead of downloading (the zoo source ``recipe:NAME``).

A recipe is named here by the import path of a function returning its :class:`Recipe`, so the zoo does not depend
on what builds it: the demo's recipe trains a model, training loads models through :mod:`starft_cli.models`, and
:mod:`starft_cli.models` resolves zoo names, so a direct import would close a cycle. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starft_cli.errors import ZooError

# name -> "module:function" returning the Recipe (what it is: the function's docstring)
RECIPES = {"starft-demo": "starft_cli.demo:zero_shot_recipe"}


@dataclass(frozen=True)
class Recipe:
    """How a locally built model is found, built and checked.

    ``folder()``: where its model folder lives (nothing is built); ``build()``: that folder, built first when it is
    absent or damaged; ``verify(folder)``: the problem with a built folder, or None when it is intact.
    """

    folder: Callable[[], Path]
    build: Callable[[], Path]
    verify: Callable[[Path], str | None]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ZooError: no recipe has that name (the known ones are listed).
    """
    target = RECIPES.get(name)
    if target is None:
        known = ", ".join(f"recipe:{r}" for r in RECIPES)
        raise ZooError(f"unknown recipe '{name}'", f"Locally built models: {known}")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)()
