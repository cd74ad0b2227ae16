"""The fine-tuning configuration: one frozen dataclass, validated before any model is loaded.

Sources combine as defaults < TOML file (``--config``) < command-line flags. The resolved configuration is
written to ``RUN/config.json`` before step 0, and ``--resume`` reads it back from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from starft_cli.errors import ConfigError
from starft_cli.train.schedules import LAMBDA_SCHEDULES
from starft_cli.train.validate import SELECT_BY


def default_workers() -> int:
    """Data-loading processes by default: 4, or fewer on a machine with fewer cores."""
    return max(0, min(4, os.cpu_count() or 1))


REGS = ("star", "kl", "none")
LOSSES = ("contrastive", "ce")
PRECISIONS = ("fp32", "bf16", "fp16")
STEP_IMPLS = ("efficient", "straightforward")
DEFAULT_CAPTION = "a photo of a {}."

# Keys that may differ between a run's stored config and the flags given with --resume.
RESUME_MUTABLE = frozenset(
    {
        "device",
        "workers",
        "resume",
        "out",
        "log_every",
        "tensorboard",
        "config_file",
        "data_root",
        "val_data_root",
        "max_bad_steps",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a fine-tuning run depends on. Defaults are METHOD.md's (ImageNet, ViT-B/16)."""

    backbone: str = "ViT-B-16"
    data: str = "imagenet"
    data_root: str | None = None
    split: str = "train"
    classnames: str | None = None
    arch: str | None = None
    caption_template: str = DEFAULT_CAPTION
    reg: str = "star"
    pool: str = "background"
    reg_lambda: float = 0.5
    lambda_schedule: str = "linear"
    loss: str = "contrastive"
    freeze_text: bool = False
    epochs: int = 10
    lr: float = 1e-5
    wd: float = 0.1
    batch_size: int = 512
    warmup: int = 500
    seed: int = 0
    workers: int = dataclasses.field(default_factory=lambda: default_workers())
    precision: str = "fp32"
    grad_accum: int = 1
    grad_checkpointing: bool = False
    checkpoint_every: int = 500
    out: str | None = None
    resume: bool = False
    val_data: str | None = None
    val_data_root: str | None = None
    val_split: str | None = None
    val_templates: str | None = None
    device: str = "auto"
    step_impl: str = "efficient"
    log_every: int = 1
    tensorboard: bool = False
    max_steps: int | None = None
    max_bad_steps: int = 0
    select_by: str = "top1"
    config_file: str | None = None

    def __post_init__(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"--{_flag(name)} '{value}' is not one of {', '.join(options)}")

        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            ok = value >= 0 if allow_zero else value > 0
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
                bound = ">= 0" if allow_zero else "> 0"
                raise ConfigError(f"--{_flag(name)} must be a number {bound} (got {value!r})")

        choice("reg", REGS)
        choice("lambda_schedule", LAMBDA_SCHEDULES)
        choice("loss", LOSSES)
        choice("precision", PRECISIONS)
        choice("step_impl", STEP_IMPLS)
        choice("select_by", SELECT_BY)
        for name in ("epochs", "batch_size", "grad_accum", "lr", "log_every"):
            positive(name)
        for name in ("wd", "warmup", "workers", "checkpoint_every", "seed", "reg_lambda", "max_bad_steps"):
            positive(name, allow_zero=True)
        if self.max_steps is not None:
            positive("max_steps")
        whole = ("epochs", "batch_size", "grad_accum", "warmup", "workers", "checkpoint_every", "seed", "max_bad_steps")
        for name in whole:
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"--{_flag(name)} must be a whole number (got {getattr(self, name)!r})")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"--batch-size {self.batch_size} is not divisible by --grad-accum {self.grad_accum}",
                "The batch is split into --grad-accum equal micro-batches",
            )
        if self.caption_template.count("{}") != 1:
            raise ConfigError("the caption template must have exactly one {} slot", "e.g. 'a photo of a {}.'")
        if self.loss == "ce" and self.reg != "none":
            raise ConfigError(
                "--loss ce is the cross-entropy baseline and takes no regulariser",
                "Add --reg none, or use --loss contrastive for StarFT",
            )
        if self.loss == "ce" and self.freeze_text:
            raise ConfigError("--freeze-text has no meaning with --loss ce (the text tower is not trained)")
        if not self.data:
            raise ConfigError("--data is required", "Pass a dataset name, folder:PATH or csv:PATH")
        if self.resume and not self.out:
            raise ConfigError("--resume needs --out RUN_DIR", "Name the run directory to continue")

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return {"reg_lambda": "lambda"}.get(name, name.replace("_", "-"))


FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))
# Alternative spellings accepted in TOML files (the flag names).
_ALIASES = {"lambda": "reg_lambda"}


def _normalise_keys(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _ALIASES.get(key, key.replace("-", "_"))
        if name not in FIELD_NAMES:
            import difflib

            close = difflib.get_close_matches(name, sorted(FIELD_NAMES), n=1)
            hint = f"Did you mean '{close[0]}'?" if close else "See `starft finetune --help` for the options"
            raise ConfigError(f"{source}: unknown setting '{key}'", hint)
        out[name] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys, or a ``[finetune]`` table, named like the flags."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no such config file: {path}", "Check the --config path") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} ({exc})", "Fix the TOML syntax") from None
    if isinstance(data.get("finetune"), dict):
        data = data["finetune"]
    return _normalise_keys(data, str(path))


def build_config(overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < TOML file < ``overrides`` (flags given explicitly; ``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_toml(config_file))
        values["config_file"] = str(config_file)
    values.update(_normalise_keys({k: v for k, v in (overrides or {}).items() if v is not None}, "flags"))
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration ({exc})") from None


def config_from_json(text: str, source: str) -> TrainConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc})") from None
    return TrainConfig(**_normalise_keys(data, source))


def merge_for_resume(stored: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """The stored config of a run, with only the settings that may change on resume taken from the flags."""
    given = _normalise_keys({k: v for k, v in overrides.items() if v is not None}, "flags")
    conflicts = sorted(
        k for k, v in given.items() if k not in RESUME_MUTABLE and getattr(stored, k) != v and k != "config_file"
    )
    if conflicts:
        shown = ", ".join(f"--{_flag(k)} ({getattr(stored, k)!r} in the run, {given[k]!r} given)" for k in conflicts)
        raise ConfigError(
            f"--resume continues a run with its saved settings, but these differ: {shown}",
            "Drop those flags, or start a new run with another --out",
        )
    mutable = {k: v for k, v in given.items() if k in RESUME_MUTABLE and k != "config_file"}
    return stored.replace(**mutable, resume=True)
