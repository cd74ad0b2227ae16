"""The on-disk layout of a model folder and of a run directory: the one place that names their files.

A **model folder** (what :func:`starft_cli.models.save_checkpoint` writes, what ``local-dir:`` and every command
load, what ``starft zoo publish`` uploads)::

    FOLDER/open_clip_model.safetensors   the weights (safetensors)
    FOLDER/open_clip_config.json         {"model_cfg", "preprocess_cfg", "arch", "starft"}
    FOLDER/classification_head.safetensors   a classifier method's head, when it has one (rows: "head_classnames")

A **run directory** (what ``starft finetune --out RUN`` writes)::

    RUN/config.json                          resolved TrainConfig, written before step 0
    RUN/metrics.jsonl                        one JSON object per optimizer step
    RUN/checkpoints/last/                    model folder + training_state.pt (optimizer, step, RNG states, ...)
    RUN/checkpoints/best/                    model folder, best ID validation value (with a validation set)
    RUN/checkpoints/*/classification_head.safetensors   the CE head (loss "ce" only)
    RUN/eval/results.json                    evaluation records (``starft evaluate --out RUN/eval``)
    RUN/.lock                                PID@HOST of the process writing the run (while it runs)

Training (:mod:`starft_cli.train.checkpoint`), publishing (:mod:`starft_cli.zoo.publish`), the demo, the zoo and
model loading (:mod:`starft_cli.models`) read these names from here. This module imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

# a model folder
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
# the weights files of an open_clip repository on the Hugging Face Hub, in open_clip's order of preference
HF_WEIGHT_CANDIDATES = (WEIGHTS_NAME, "open_clip_pytorch_model.bin")

# a run directory
RUN_CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST = "best"
LAST = "last"
CHECKPOINT_NAMES = (BEST, LAST)  # the order a consumer prefers them in (publishing: best, else last)
STATE_NAME = "training_state.pt"
HEAD_NAME = "classification_head.safetensors"
EVAL_DIR = "eval"
RESULTS_NAME = "results.json"
LOCK_NAME = ".lock"


class RunLayout:
    """The paths of a run directory (nothing is read or written here; :class:`starft_cli.train.checkpoint.RunDir`
    adds the writing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    @property
    def config(self) -> Path:
        """``RUN/config.json``: the resolved training configuration."""
        return self.root / RUN_CONFIG_NAME

    @property
    def metrics(self) -> Path:
        """``RUN/metrics.jsonl``: one JSON record per optimizer step."""
        return self.root / METRICS_NAME

    @property
    def checkpoints(self) -> Path:
        """``RUN/checkpoints``: the folder holding the checkpoint folders."""
        return self.root / CHECKPOINTS_DIR

    def checkpoint(self, name: str) -> Path:
        """``RUN/checkpoints/NAME`` (``best`` or ``last``), a model folder."""
        return self.checkpoints / name

    @property
    def eval_results(self) -> Path:
        """``RUN/eval/results.json``: the run's evaluation records, when it was evaluated into ``RUN/eval``."""
        return self.root / EVAL_DIR / RESULTS_NAME

    @property
    def lock(self) -> Path:
        """``RUN/.lock``: held while a process writes the run."""
        return self.root / LOCK_NAME

    def is_run(self) -> bool:
        """Whether ``root`` is a run directory (it holds ``config.json``)."""
        return self.config.is_file()


def is_model_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds starft's weights file (``open_clip_model.safetensors``)."""
    return (Path(folder) / WEIGHTS_NAME).is_file()


def run_of_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The run directory a checkpoint folder ``RUN/checkpoints/NAME`` belongs to, or None when ``folder`` is not
    inside a run directory."""
    folder = Path(folder)
    if folder.parent.name != CHECKPOINTS_DIR:
        return None
    run = folder.parent.parent
    return run if RunLayout(run).is_run() else None


def find_model_folder(path: str | os.PathLike[str]) -> tuple[Path, Path | None] | None:
    """The model folder that ``path`` names and its run directory (or None): ``path`` itself when it is a model
    folder, else the run directory's ``checkpoints/best``, else its ``checkpoints/last``. None when there is none."""
    path = Path(path)
    if is_model_folder(path):
        return path, run_of_checkpoint(path)
    layout = RunLayout(path)
    for name in CHECKPOINT_NAMES:
        if is_model_folder(layout.checkpoint(name)):
            return layout.checkpoint(name), path
    return None
