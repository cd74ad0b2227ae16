"""Learning-rate and regulariser-weight schedules: pure functions of the step / epoch."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps (``base_lr * (step + 1) / warmup``), then cosine to ``min_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total_steps - warmup
    if span <= 0:
        return base_lr
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def reg_lambda(epoch: int, epochs: int, base: float, schedule: str = "linear") -> float:
    """The regulariser weight of ``epoch`` (0-based): ``base * (1 - (epoch + 1) / epochs)`` when linear."""
    if schedule == "constant":
        return base
    if schedule != "linear":
        raise ValueError(f"unknown lambda schedule {schedule!r}")
    return base * (1.0 - (epoch + 1) / epochs)
