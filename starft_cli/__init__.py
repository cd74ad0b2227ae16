"""starft: robust fine-tuning of zero-shot image-text models with StarFT.

The public Python API is imported lazily so that ``starft --help`` does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.4.0"

_API = {
    # models and zero-shot classification
    "load": "starft_cli.models",
    "load_model": "starft_cli.models",  # deprecated alias of load (returns a tuple, warns)
    "parse_model_ref": "starft_cli.models",
    "ModelRef": "starft_cli.models",
    "LoadedModel": "starft_cli.models",
    "save_checkpoint": "starft_cli.models",
    "zero_shot_head": "starft_cli.zeroshot",
    "classify": "starft_cli.zeroshot",
    # evaluation, metrics, reports
    "evaluate": "starft_cli.eval.runner",
    "load_results": "starft_cli.reports",
    "top_k_accuracy": "starft_cli.eval.metrics",
    "accuracy": "starft_cli.eval.metrics",
    "per_class_recall": "starft_cli.eval.metrics",
    "mean_per_class_recall": "starft_cli.eval.metrics",
    "group_accuracies": "starft_cli.eval.metrics",
    "worst_group_accuracy": "starft_cli.eval.metrics",
    "mean_group_accuracy": "starft_cli.eval.metrics",
    "macro_f1": "starft_cli.eval.metrics",
    "worst_region_accuracy": "starft_cli.eval.metrics",
    "expected_calibration_error": "starft_cli.eval.metrics",
    # fine-tuning
    "finetune": "starft_cli.train",
    "TrainConfig": "starft_cli.train.config",
    "build_config": "starft_cli.train.config",
    "star_regularizer": "starft_cli.losses",
    "kl_regularizer": "starft_cli.losses",
    "star_regularizer_rows": "starft_cli.losses",
    "contrastive_loss": "starft_cli.losses",
    "wise": "starft_cli.wise",
    "write_wise": "starft_cli.wise",
    "uniform_soup": "starft_cli.wise",
    "greedy_soup": "starft_cli.wise",
    "model_stock": "starft_cli.wise",
    "write_soup": "starft_cli.wise",
    # the demo
    "run_demo": "starft_cli.demo",
    "DemoConfig": "starft_cli.demo",
    # datasets
    "load_dataset": "starft_cli.data.registry",
    "list_datasets": "starft_cli.data.registry",
    "register_dataset": "starft_cli.data.registry",
    # errors
    "StarftError": "starft_cli.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'starft_cli' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The module's own names and the lazily imported public API (``__all__``), so that ``dir()`` and tab
    completion show what ``starft_cli.NAME`` gives."""
    return sorted(set(globals()) | set(__all__))
