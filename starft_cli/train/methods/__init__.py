"""The fine-tuning methods, one module each, registered by name with :func:`register`.

Adding a method is one new module in this package (a :class:`~starft_cli.train.methods.base.Method` subclass
decorated with ``@register``) and its tests: the registry imports every module of the package on first use, and
the loop, the step, the configuration and the CLI read what the method declares. Importing this package does not
import torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from starft_cli.train.methods.base import ClassifierBatch, HParam, LossParts, Method, RunContext, resolve_hparams

__all__ = [
    "ClassifierBatch",
    "HParam",
    "LossParts",
    "Method",
    "RunContext",
    "available",
    "get_method",
    "make_method",
    "register",
    "resolve_hparams",
]

_REGISTRY: dict[str, type[Method]] = {}
_LOADED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``.

    Raises:
        ValueError: the name is taken, or the class does not declare what the engine needs.
    """
    for attr in ("name", "title", "source", "loss_doc", "objective"):
        if not getattr(cls, attr, None):
            raise ValueError(f"method {cls.__name__} does not set {attr}")
    from starft_cli.train.methods.base import OBJECTIVES

    if cls.objective not in OBJECTIVES:
        raise ValueError(f"method {cls.name}: objective {cls.objective!r} is not one of {OBJECTIVES}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True


def available() -> dict[str, type[Method]]:
    """Every registered method by name, in a stable order (StarFT first, then by name)."""
    _load()
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[0] != "starft", item[0])))


def get_method(name: str) -> type[Method]:
    """The method registered as ``name``.

    Raises:
        ConfigError: no such method (with the names there are, and the closest one).
    """
    from starft_cli.errors import ConfigError
    from starft_cli.suggest import did_you_mean

    methods = available()
    if name not in methods:
        hint = did_you_mean(name, methods) or "Run `starft finetune --help-method` for the list"
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(methods)})", hint)
    return methods[name]


def make_method(name: str, hp: dict[str, Any] | None = None, config: Any = None) -> Method:
    """An instance of method ``name`` with hyper-parameters ``hp`` (the paper's defaults for the rest)."""
    return get_method(name)(hp, config)
