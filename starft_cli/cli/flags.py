"""Core errors name arguments (`` `top_k` ``); the CLI names the flag that sets each one (``--top-k``).

:data:`FLAGS` lists every argument a core error names (``param=``) with its flag (a test checks both ways); an
argument not listed reads as ``--NAME-WITH-DASHES``.
"""

from __future__ import annotations

from starft_cli.errors import StarftError

# core argument name -> how the CLI sets it
FLAGS = {
    "arch": "--arch",
    "batch_size": "--batch-size",
    "caption_template": "--caption-template",
    "classnames_file": "--classnames FILE",
    "data_root": "--data-root",
    "device": "--device",
    "data": "--data",
    "dry_run": "--dry-run",
    "fine_tuned": "--run",
    "force": "--force",
    "hparams": "--hp NAME=VALUE",
    "labels": "--labels (or --labels-file)",
    "lr": "--lr",
    "method": "--method",
    "metrics": "--metric",
    "models": "--model",
    "name": "--name",
    "grad_accum": "--grad-accum",
    "grad_checkpointing": "--grad-checkpointing",
    "out": "--out",
    "plot": "--plot",
    "pretrained": "--pretrained",
    "repo": "--repo",
    "resume": "--resume",
    "runs": "--run",
    "select_by": "--select-by",
    "skip_missing": "--skip-missing",
    "strict": "--strict",
    "suite": "--suite",
    "tensorboard": "--tensorboard",
    "threads": "--threads",
    "top_k": "--top-k",
    "val_data": "--val-data",
    "val_split": "--val-split",
    "vocab": "--vocab",
}


def flag_for(name: str) -> str:
    """The command-line flag of the core argument ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def error_line(exc: StarftError) -> str:
    """``exc`` on one line, each argument it names shown as its flag."""
    return exc.one_line(flag_for)


def with_flags(text: str) -> str:
    """A core message kept as text (e.g. a data check's problem list), each `` `argument` `` of :data:`FLAGS`
    shown as its flag."""
    for name, flag in FLAGS.items():
        text = text.replace(f"`{name}`", flag)
    return text
