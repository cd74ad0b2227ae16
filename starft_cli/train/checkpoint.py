"""The run directory and its checkpoints.

Layout::

    RUN/config.json                  resolved TrainConfig, written before step 0
    RUN/metrics.jsonl                one JSON object per optimizer step
    RUN/checkpoints/last/            model folder (open_clip_model.safetensors + open_clip_config.json)
    RUN/checkpoints/last/training_state.pt   optimizer, scaler, step, epoch, position in the epoch, RNG states
    RUN/checkpoints/best/            model folder, best ID validation accuracy (with --val-data)

A checkpoint folder is written complete under ``checkpoints/.NAME.partial`` and then swapped in by renames, so
a crash at any moment leaves either the previous or the new checkpoint, never a mix. The training state holds
only tensors and plain Python values and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starft_cli.errors import CheckpointError
from starft_cli.paths import atomic_path, atomic_write_text

STATE_NAME = "training_state.pt"
HEAD_NAME = "classification_head.safetensors"
STATE_FORMAT = 1


class RunDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    def find_checkpoint(self, name: str) -> Path | None:
        """The complete checkpoint ``name``, also after a crash between the two renames of a swap."""
        final = self.checkpoint(name)
        if (final / STATE_NAME).is_file() or (name != "last" and final.is_dir()):
            return final
        old = final.parent / f".{name}.old"
        if (old / STATE_NAME).is_file():
            return old
        return None

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config, text)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(finite_json(dict(record)), allow_nan=False) + "\n"  # strict JSON: NaN/inf -> null
        with open(self.metrics, "a", encoding="utf-8") as fh:  # one write per line: a crash loses at most it
            fh.write(line)
            fh.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metrics of steps after ``last_step`` (they are redone on resume), and any torn last line."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= last_step:
                kept.append(line)
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that it is strict JSON."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def save_training_checkpoint(
    run: RunDir,
    name: str,
    model: Any,
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    *,
    arch: str | None,
    metadata: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    head: Any | None = None,
) -> Path:
    """Write checkpoint ``name`` (model folder + optional training state + optional CE head) and swap it in.

    Raises:
        NonFiniteWeights: the weights hold NaN or inf (nothing is written; the previous checkpoint stays).
    """
    import torch

    from starft_cli.models import nonfinite_tensors, save_checkpoint

    bad = nonfinite_tensors(model.state_dict())
    if head is not None:
        bad += [f"head.{n}" for n in nonfinite_tensors({"weight": head.detach()})]
    if bad:  # never written: a checkpoint is either finite or absent
        raise NonFiniteWeights(bad)
    final = run.checkpoint(name)
    partial = final.parent / f".{name}.partial"
    old = final.parent / f".{name}.old"
    if partial.exists():
        shutil.rmtree(partial)
    save_checkpoint(model, partial, model_cfg, preprocess_cfg, arch=arch, metadata=metadata)
    if head is not None:
        from safetensors.torch import save_file

        with atomic_path(partial / HEAD_NAME) as tmp:
            save_file({"weight": head.detach().cpu().contiguous()}, str(tmp))
    if state is not None:
        with atomic_path(partial / STATE_NAME) as tmp:
            torch.save(dict(state), tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)
    return final


class NonFiniteWeights(Exception):
    """Raised by :func:`save_training_checkpoint` instead of writing non-finite weights (the loop turns it into
    :class:`~starft_cli.errors.TrainingDiverged` naming the step)."""

    def __init__(self, tensors: list[str]) -> None:
        super().__init__(f"{len(tensors)} tensors hold NaN or inf (e.g. {tensors[0]})")
        self.tensors = tensors


def load_training_state(folder: Path) -> dict[str, Any]:
    import torch

    path = folder / STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read training state {path} ({exc})", "Start a new run with another --out"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a starft training state (format {STATE_FORMAT})")
    return state
