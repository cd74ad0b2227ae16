"""Shared pieces of the method tests: a run context on the tiny model, float64 cross-entropy, the CLI runner."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods import RunContext

runner = CliRunner()
FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "2", "--lr", "1e-4", "--device", "cpu"]
CLASSES = ["cat", "dog", "car"]


def finetune(*args: str) -> Any:
    return runner.invoke(app, ["finetune", *FAST, *args])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def context(tiny: Any, templates: list[str], seed: int = 5) -> RunContext:
    """A run context on the tiny model: the student a copy of the frozen eval-mode teacher (both copies: the
    session's ``tiny`` fixture is shared and must not be frozen)."""
    teacher = copy.deepcopy(tiny.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    return RunContext(
        student, teacher, None, tiny.tokenizer, list(CLASSES), templates, torch.device("cpu"), DistEnv(), seed, 10
    )


def cross_entropy64(logits: list[list[float]], labels: list[int]) -> float:
    """Mean over rows of log(sum_c exp(z_c)) - z_y, by hand."""
    total = 0.0
    for z, y in zip(logits, labels, strict=True):
        top = max(z)
        total += top + math.log(sum(math.exp(v - top) for v in z)) - z[y]
    return total / len(labels)
