"""Evaluation: suites, metrics (pure functions) and the engine with its feature cache."""

from __future__ import annotations

from typing import Any

_API = {
    "evaluate": "starft_cli.eval.runner",
    "evaluate_plan": "starft_cli.eval.runner",
    "EvalResult": "starft_cli.eval.runner",
    "METRICS": "starft_cli.eval.metrics",
    "Metric": "starft_cli.eval.metrics",
    "plan": "starft_cli.eval.runner",
    "get_suite": "starft_cli.eval.suites",
    "suite_names": "starft_cli.eval.suites",
    "compute_features": "starft_cli.eval.features",
}


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'starft_cli.eval' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
