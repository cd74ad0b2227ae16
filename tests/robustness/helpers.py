"""Shared pieces of the robustness suite: a tiny CPU training run, launched plain or with a fault injected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 8  # 16 images, batch 4: 4 steps per epoch, 2 epochs


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``starft finetune`` of starft-tiny:none on CPU: 8 steps, checkpoints at 3, 4, 6, 8, validation per epoch."""
    return [
        "finetune", "--backbone", "starft-tiny:none", "--data", f"folder:{data}", "--val-data", f"folder:{data}",
        "--batch-size", "4", "--epochs", "2", "--warmup", "2", "--lr", "1e-4", "--workers", "0",
        "--checkpoint-every", "3", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    out.pop("STARFT_DEBUG", None)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return out


def starft(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """``python -m starft_cli ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "starft_cli", *args], cwd=ROOT, env=env(), capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def inject_cmd(point: str, n: int, mode: str, *args: str) -> list[str]:
    """The command line of ``starft ARGS`` with fault ``mode`` at the ``n``-th call of ``point`` (see inject.py)."""
    return [sys.executable, "-m", "tests.robustness.inject", point, str(n), mode, "--", *args]


def with_fault(point: str, n: int, mode: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        inject_cmd(point, n, mode, *args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "open_clip_model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def state_step(folder: Path) -> int:
    return int(torch.load(folder / "training_state.pt", weights_only=True)["step"])


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the timing field (the only one that differs between equal runs)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    for record in records:
        record.pop("images_per_s", None)
    return records


def one_line_error(stderr: str) -> str:
    """The single ``error: ...`` line of a failed command (warnings and progress lines may precede it)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], stderr
    return errors[0]
