"""The StarFT fine-tuning engine: config, loop, schedules, checkpoints, distributed helpers, spurious bank.

Importing this package does not import torch; :func:`finetune` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starft_cli.train.config import TrainConfig, build_config

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["TrainConfig", "build_config", "finetune"]


def finetune(config: TrainConfig, progress: Any = None) -> Path:
    """Fine-tune as ``config`` says and return the run directory (see :mod:`starft_cli.train.loop`)."""
    from starft_cli.train.loop import finetune as _finetune

    return _finetune(config, progress=progress)
