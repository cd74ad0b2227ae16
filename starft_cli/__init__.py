"""starft: robust fine-tuning of zero-shot image-text models with StarFT.

The public Python API is imported lazily so that ``starft --help`` does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "starft_cli.models",
    "parse_model_ref": "starft_cli.models",
    "save_checkpoint": "starft_cli.models",
    "zero_shot_head": "starft_cli.zeroshot",
    "classify": "starft_cli.zeroshot",
    "StarftError": "starft_cli.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'starft_cli' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
