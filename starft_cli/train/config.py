"""The fine-tuning configuration: one frozen dataclass, validated before any model is loaded.

Sources combine in one place (:func:`_given`), lowest first: defaults < the TOML file's top-level keys < its
``[finetune]`` table < command-line flags. The method's hyper-parameters: the method's defaults < its TOML table
(``[lipsum-ft]``, at top level or inside ``[finetune]``, the latter winning) < an ``hp`` table < ``--hp NAME=VALUE``
flags, checked against what the method declares (every method table in the file is checked, not only the chosen
method's). An unknown key or table, or a value of the wrong type, is an error naming it. The resolved
configuration (every default filled in) is written to ``RUN/config.json`` before step 0, and a resume reads it
back from there (:func:`config_for_run`), taking only the settings that may change from flags and file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from starft_cli.errors import CheckpointError, ConfigError
from starft_cli.train.optim import WD_SCOPES
from starft_cli.train.schedules import LAMBDA_SCHEDULES, LAST_BATCH
from starft_cli.train.validate import SELECT_BY

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Data-loading processes by default: 4, or fewer where the process may use fewer cores (its affinity mask and
    cgroup CPU quota, :func:`starft_cli.threads.usable_cores`; ``os.cpu_count()`` counts cores it may not use)."""
    from starft_cli.threads import cgroup_cpu_quota, usable_cores

    return max(0, min(4, usable_cores(quota=cgroup_cpu_quota())))


# The 0.2 spellings of a method (--reg / --loss), kept one version longer than announced: removed in 0.5.
LEGACY_REGS = {"star": "starft", "kl": "kl", "none": "flyp"}
LEGACY_LOSSES = ("contrastive", "ce")
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
        "strict",
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
    method: str = "starft"
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    pool: str = "background"
    reg_lambda: float | None = None  # None: the method's default
    lambda_schedule: str | None = None  # None: the method's default
    freeze_text: bool = False
    epochs: int = 10
    lr: float = 1e-5
    wd: float = 0.1
    wd_scope: str = "open-clip"  # which parameters decay: open_clip's convention, or all (the authors')
    batch_size: int = 512
    last_batch: str = "drop"  # the epoch's last partial batch: drop, or keep (the authors')
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
    strict: bool = False  # an unreadable training image stops the run (default: the next readable one replaces it)

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

        from starft_cli.train.methods import get_method, resolve_hparams

        for f in fields(self):
            value = getattr(self, f.name)
            problem = _type_problem(f.name, value)
            if problem:
                raise ConfigError(f"--{_flag(f.name)} {problem}")
            if _kind(f.name)[0] == "float" and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
        method = get_method(self.method)
        if not isinstance(self.hparams, dict):
            raise ConfigError(f"method hyper-parameters must be a table (got {self.hparams!r})")
        object.__setattr__(self, "hparams", resolve_hparams(method, self.hparams))
        if self.lambda_schedule is None:
            object.__setattr__(self, "lambda_schedule", method.default_lambda_schedule)
        if self.reg_lambda is None:
            object.__setattr__(self, "reg_lambda", float(method.default_lambda) if method.regularized else 0.0)
        choice("lambda_schedule", LAMBDA_SCHEDULES)
        choice("precision", PRECISIONS)
        choice("step_impl", STEP_IMPLS)
        choice("select_by", SELECT_BY)
        choice("wd_scope", WD_SCOPES)
        choice("last_batch", LAST_BATCH)
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
        if self.last_batch == "keep" and self.grad_accum > 1:
            raise ConfigError(
                "--last-batch keep works with --grad-accum 1 only (the partial last batch cannot be split into equal "
                "micro-batches)",
                "Use --grad-accum 1 (more processes or --grad-checkpointing for memory), or --last-batch drop",
            )
        self._check_holdout()
        if self.caption_template.count("{}") != 1:
            raise ConfigError("the caption template must have exactly one {} slot", "e.g. 'a photo of a {}.'")
        if method.objective == "classifier" and self.freeze_text:
            raise ConfigError(
                f"--freeze-text has no meaning with --method {self.method} (a classifier method: the text tower is "
                "not trained)"
            )
        if not self.data:
            raise ConfigError("--data is required", "Pass a dataset name, folder:PATH or csv:PATH")
        if self.resume and not self.out:
            raise ConfigError("--resume needs --out RUN_DIR", "Name the run directory to continue")

    def _check_holdout(self) -> None:
        from starft_cli.train.holdout import parse_holdout

        try:
            fraction = parse_holdout(self.val_data)
        except ValueError as exc:
            raise ConfigError(
                f"--val-data '{self.val_data}': {exc}", "e.g. --val-data holdout:0.02 holds out 2% of the training data"
            ) from None
        if fraction is not None and self.val_split is not None:
            raise ConfigError(
                "--val-split has no meaning with --val-data holdout:FRACTION (the held-out part of the training split)",
                "Drop --val-split",
            )

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return {"reg_lambda": "lambda", "hparams": "hp"}.get(name, name.replace("_", "-"))


FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))
# Alternative spellings accepted in TOML files (the flag names).
_ALIASES = {"lambda": "reg_lambda", "hp": "hparams"}
# Settings that only mean something for some methods: (what the method must declare, the flag).
_METHOD_ONLY = {
    "pool": ("needs_pool", "--pool"),
    "reg_lambda": ("regularized", "--lambda"),
    "lambda_schedule": ("regularized", "--lambda-schedule"),
}


_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}
_EXPECTED = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false", "dict": "a table"}
_CHOICES = {
    "lambda_schedule": LAMBDA_SCHEDULES,
    "precision": PRECISIONS,
    "step_impl": STEP_IMPLS,
    "select_by": SELECT_BY,
}


def _kind(name: str) -> tuple[str, bool]:
    """(``str``, ``int``, ``float``, ``bool`` or ``dict``; whether None is allowed) of setting ``name``."""
    parts = [p.strip() for p in _FIELD_TYPES[name].split("|")]
    return parts[0].split("[")[0], "None" in parts


def _type_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be setting ``name`` (e.g. "must be a whole number (got 'two', text)"), or None. Floats
    must be finite; a whole number is a valid float."""
    if name not in _FIELD_TYPES:
        return None
    kind, optional = _kind(name)
    if value is None:
        return None if optional else f"must be {_EXPECTED[kind]} (got nothing)"
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "dict": isinstance(value, dict),
    }[kind]
    if not ok:
        names = {str: "text", bool: "true/false", int: "a whole number", float: "a number", dict: "a table"}
        return f"must be {_EXPECTED[kind]} (got {value!r}, {names.get(type(value), type(value).__name__)})"
    if kind == "float" and not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    return None


def _normalise_keys(data: Mapping[str, Any], source: str, tables: bool = False) -> dict[str, Any]:
    """Setting names as the dataclass spells them, each value's type checked. With ``tables``, a table named after a
    method holds that method's hyper-parameters (collected under ``_tables``), and ``hp`` a table of the chosen
    method's; any other table is an error.

    Raises:
        ConfigError: an unknown key or table, or a value of the wrong type (naming ``source`` and the key).
    """
    from starft_cli.suggest import did_you_mean

    out: dict[str, Any] = {}
    method_tables: dict[str, Any] = {}
    where = "" if source == "flags" else f"{source}: "
    for key, value in data.items():
        name = _ALIASES.get(key, key.replace("-", "_"))
        if tables and isinstance(value, dict) and name != "hparams":
            from starft_cli.train.methods import available

            if key not in available():
                raise ConfigError(
                    f"{where}unknown table [{key}]",
                    did_you_mean(key, [*available(), "finetune"], n=1, quote=True)
                    or "The tables are [finetune] and one per method (`starft finetune --help-method` lists them)",
                )
            method_tables[key] = dict(value)
            continue
        if name not in FIELD_NAMES and name not in ("reg", "loss"):
            hint = (
                did_you_mean(name, sorted(FIELD_NAMES), n=1, quote=True)
                or "See `starft finetune --help` for the options"
            )
            raise ConfigError(f"{where}unknown setting '{key}'", hint)
        problem = _type_problem(name, value)
        if problem:
            raise ConfigError(f"{where}'{key}' {problem}" if where else f"--{_flag(name)} {problem}")
        out[name] = value
    if method_tables:
        out["_tables"] = method_tables
    return out


def _resolve_method(values: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """Translate the 0.2 spellings ``reg`` / ``loss`` into ``method`` (with a deprecation warning from flags and
    TOML files; silently for a 0.2 run's config.json), and pick the chosen method's TOML table."""
    reg, loss = values.pop("reg", None), values.pop("loss", None)
    tables = values.pop("_tables", {})
    if reg is not None or loss is not None:
        if loss is not None and loss not in LEGACY_LOSSES:
            raise ConfigError(f"--loss '{loss}' is not one of {', '.join(LEGACY_LOSSES)}", "Use --method NAME")
        if reg is not None and reg not in LEGACY_REGS:
            raise ConfigError(f"--reg '{reg}' is not one of {', '.join(LEGACY_REGS)}", "Use --method NAME")
        if loss == "ce" and reg not in (None, "none"):
            raise ConfigError(
                "--loss ce is the cross-entropy baseline and takes no regulariser",
                "Use --method ft (cross-entropy) or --method starft",
            )
        legacy = "ft" if loss == "ce" else LEGACY_REGS[reg or "star"]
        if values.get("method") not in (None, legacy):
            raise ConfigError(
                f"{source + ': ' if source not in ('', 'flags') else ''}--method {values['method']} contradicts the "
                f"deprecated --reg/--loss (which say {legacy})",
                "Drop --reg/--loss",
            )
        if warn:
            given = " ".join(f"--{k} {v}" for k, v in (("reg", reg), ("loss", loss)) if v is not None)
            logger.warning("%s is deprecated and will be removed in 0.5: use --method %s", given, legacy)
        values["method"] = legacy
    method = values.get("method", TrainConfig.method)
    from starft_cli.train.methods import get_method, resolve_hparams

    for name, table in tables.items():  # a typo in another method's table is caught too
        resolve_hparams(get_method(name), table)
    hparams = dict(tables.get(method, {}))
    hparams.update(values.get("hparams") or {})
    if tables or values.get("hparams"):
        values["hparams"] = hparams
    return values


def _check_method_settings(values: Mapping[str, Any]) -> None:
    """Settings given for a method that ignores them are refused (they would silently do nothing)."""
    from starft_cli.train.methods import get_method

    method = get_method(values.get("method", TrainConfig.method))
    for key, (needs, flag) in _METHOD_ONLY.items():
        if values.get(key) is not None and not getattr(method, needs):
            raise ConfigError(
                f"{flag} has no effect with --method {method.name}",
                "Drop it, or choose a method that uses it (e.g. --method starft)",
            )


def _check_choices(values: Mapping[str, Any]) -> None:
    """A setting with a fixed set of values has one of them (checked before any combination of settings)."""
    for key, options in _CHOICES.items():
        if values.get(key) is not None and values[key] not in options:
            raise ConfigError(f"--{_flag(key)} '{values[key]}' is not one of {', '.join(options)}")


def _check_val_settings(values: Mapping[str, Any]) -> None:
    """Validation settings without validation data would silently do nothing."""
    for key in ("val_split", "val_templates", "select_by"):
        if values.get(key) is not None and values.get("val_data") is None:
            raise ConfigError(f"--{_flag(key)} is given without --val-data", "Add --val-data DATA")


def parse_hp(items: list[str] | None) -> dict[str, str] | None:
    """``--hp NAME=VALUE`` flags as a dict (values stay text; the method parses them).

    Raises:
        ConfigError: an item without ``=``.
    """
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--hp '{item}' is not NAME=VALUE", "e.g. --hp alpha=0.01")
        out[name.strip().replace("-", "_")] = value.strip()
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file (or a shipped recipe, ``paper:NAME``), named like the flags: top-level keys, and a
    ``[finetune]`` table whose keys win over the top level's; a table named after a method (``[lipsum-ft]``, at top
    level or inside ``[finetune]``, the latter winning key by key) holds that method's hyper-parameters (under
    ``_tables``).

    Raises:
        ConfigError: the file is missing or not TOML, an unknown key or table, a value of the wrong type.
    """
    from starft_cli.train.recipes import resolve_config_path

    path = resolve_config_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no such config file: {path}", "Check the --config path") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} ({exc})", "Fix the TOML syntax") from None
    section = data.pop("finetune", None)
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{path}: 'finetune' must be a table ([finetune]), not a value")
    values = _normalise_keys(data, str(path), tables=True)
    if section is not None:
        inner = _normalise_keys(section, f"{path} [finetune]", tables=True)
        tables = values.pop("_tables", {})
        for name, table in inner.pop("_tables", {}).items():
            tables[name] = {**tables.get(name, {}), **table}
        values.update(inner)
        if tables:
            values["_tables"] = tables
    return values


def _given(overrides: Mapping[str, Any] | None, config_file: str | Path | None) -> dict[str, Any]:
    """Every source merged, in the one precedence of the module docstring: the TOML file's settings, then the
    flags' (``None`` values are not given); the chosen method's table and ``hp`` values under ``hparams``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_toml(config_file))
        values["config_file"] = str(config_file)
    flags = _normalise_keys({k: v for k, v in (overrides or {}).items() if v is not None}, "flags")
    if "hparams" in flags and "hparams" in values:
        flags["hparams"] = {**values["hparams"], **flags["hparams"]}
    values.update(flags)
    return _resolve_method(values, "flags", warn=True)


def build_config(overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < TOML file (top level < ``[finetune]``) < ``overrides`` (flags given explicitly; ``None`` values
    are ignored).

    Raises:
        ConfigError: an unknown setting, table or method, a value of the wrong type or not one of its choices, or
            a setting the method ignores.
    """
    values = _given(overrides, config_file)
    _check_choices(values)
    _check_method_settings(values)
    _check_val_settings(values)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration ({exc})") from None


def config_from_json(text: str, source: str) -> TrainConfig:
    """A run's stored ``config.json`` (0.2 runs' ``reg``/``loss`` are read as their method)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a starft run configuration")
    return TrainConfig(**_resolve_method(_normalise_keys(data, source), source, warn=False))


def _resume_conflicts(stored: TrainConfig, given: Mapping[str, Any]) -> list[str]:
    """The settings in ``given`` that a resume may not change and that differ from the stored run's."""
    return sorted(
        k
        for k, v in given.items()
        if k not in RESUME_MUTABLE and k != "config_file" and k in FIELD_NAMES and getattr(stored, k) != v
    )


def _refuse_conflicts(stored: TrainConfig, given: Mapping[str, Any]) -> None:
    conflicts = _resume_conflicts(stored, given)
    if conflicts:
        shown = ", ".join(f"--{_flag(k)} ({getattr(stored, k)!r} in the run, {given[k]!r} given)" for k in conflicts)
        raise ConfigError(
            f"--resume continues a run with its saved settings, but these differ: {shown}",
            "Drop those flags, or start a new run with another --out",
        )


def merge_for_resume(
    stored: TrainConfig, overrides: Mapping[str, Any], config_file: str | Path | None = None
) -> TrainConfig:
    """The stored config of a run, with only the settings that may change on resume taken from the flags and the
    TOML file (merged as for a new run).

    Raises:
        ConfigError: a setting that may not change differs from the run's.
    """
    given = _given(overrides, config_file)
    _check_choices(given)
    if "hparams" in given:  # compare the method's resolved values, not the subset given
        given["hparams"] = {**stored.hparams, **given["hparams"]}
        from starft_cli.train.methods import get_method, resolve_hparams

        given["hparams"] = resolve_hparams(get_method(given.get("method", stored.method)), given["hparams"])
    _refuse_conflicts(stored, given)
    mutable = {k: v for k, v in given.items() if k in RESUME_MUTABLE and k != "config_file"}
    return stored.replace(**mutable, resume=True)


def check_resume(config: TrainConfig, stored: TrainConfig) -> None:
    """A resume must continue the stored run's settings (all but :data:`RESUME_MUTABLE`).

    Raises:
        ConfigError: settings differ (named).
    """
    _refuse_conflicts(stored, {k: getattr(config, k) for k in FIELD_NAMES})


def config_for_run(
    overrides: Mapping[str, Any], config_file: str | Path | None = None, resume: bool = False
) -> TrainConfig:
    """The configuration of the run that ``overrides`` (flags) and ``config_file`` ask for. A new run's is
    built from defaults < TOML < flags; a resume (``resume``, with ``overrides["out"]``) takes the run's own
    ``config.json`` and only the settings that may change on resume from the flags.

    Raises:
        ConfigError: bad settings; on resume, no ``out`` or settings that differ from the run's.
        CheckpointError: the run directory holds a config.json that cannot be read.
    """
    if not resume:
        return build_config(overrides, config_file)
    out = overrides.get("out")
    if not out:
        raise ConfigError("--resume needs --out RUN_DIR", "Name the run directory to continue")
    from starft_cli.train.checkpoint import RunDir

    stored_path = RunDir(out).config
    if not stored_path.is_file():
        return build_config({**overrides, "resume": True}, config_file)
    try:
        text = stored_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot read {stored_path} ({exc})", "Check --out") from None
    return merge_for_resume(config_from_json(text, str(stored_path)), overrides, config_file)
