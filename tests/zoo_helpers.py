"""Helpers for the zoo tests: a tiny published-style checkpoint and manifest writers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny) -> Path:
    """A starft-tiny model folder (random weights, seed 0) as save_checkpoint writes it."""
    from starft_cli.models import save_checkpoint

    folder = tmp_path_factory.mktemp("tiny_ckpt")
    save_checkpoint(
        tiny.model,
        folder,
        tiny.model_cfg,
        tiny.preprocess_cfg,
        arch="starft-tiny",
        metadata={"method": "starft", "base_model": "starft-tiny:none", "lr": 1e-5, "lambda": 0.5},
    )
    return folder


def manifest_text(entries: dict[str, dict[str, object]]) -> str:
    """A manifest with ``entries`` (name -> fields; string values quoted, bools/numbers as is)."""
    lines = ["schema = 1"]
    for name, fields in entries.items():
        lines += ["", f"[models.{name}]"]
        for key, value in fields.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = f'"{value}"'
            else:
                rendered = str(value)
            lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def hub_entry(repo: str, revision: str, sha256: str, filename: str | None = None, **extra: object) -> dict[str, object]:
    file_part = f"/{filename}" if filename else ""
    return {
        "arch": "starft-tiny",
        "source": f"hf-hub:{repo}{file_part}@{revision}",
        "sha256": sha256,
        "kind": "baseline",
        "license": "MIT",
    } | extra


def write_zoo(path: Path, entries: dict[str, dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_text(entries), encoding="utf-8")
    return path
