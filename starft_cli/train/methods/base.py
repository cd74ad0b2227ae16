"""What a fine-tuning method is to the engine: a class that declares what it needs and computes its loss.

The loop (:mod:`starft_cli.train.loop`) and the step (:mod:`starft_cli.train.step`) name no method: they ask the
method what to build (a frozen teacher, a zero-shot head, which parameters train, the spurious pool), call its
hooks at fixed points of a run, and back-propagate what it returns. Two objectives cover the methods:

* ``"contrastive"``: FLYP's caption contrastive loss over the batch (exact gradient accumulation by the step's
  cached-feature scheme), plus ``lambda x`` the method's batch-coupled :meth:`Method.regularizer`;
* ``"classifier"``: the method's :meth:`Method.classifier_loss` on the logits of a zero-shot-initialised linear
  head, a per-sample mean (micro-batch shares add up to the batch's loss).

A parameter-space term (:meth:`Method.weight_penalty`) is added once per optimizer step, to the last
micro-batch's loss. Everything random in a method is a function of ``(seed, step)``, never of the global RNG, so
that a resumed run is bitwise the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from starft_cli.train.distributed import DistEnv

OBJECTIVES = ("contrastive", "classifier")


@dataclass(frozen=True)
class HParam:
    """A method hyper-parameter: its name (the key under the method's TOML table and in ``--hp NAME=VALUE``),
    the paper's default, one line of help, its type and bounds (``minimum``/``maximum`` inclusive)."""

    name: str
    default: float | int | str
    help: str
    kind: type = float
    minimum: float | None = 0.0
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, value: Any, method: str) -> float | int | str:
        """``value`` (a TOML value or the text after ``=``) as this parameter's type, checked.

        Raises:
            ConfigError: the wrong type, out of bounds, or not one of the choices.
        """
        from starft_cli.errors import ConfigError

        where = f"{method} hyper-parameter '{self.name}'"
        if self.kind is str:
            text = str(value)
            if self.choices is not None and text not in self.choices:
                raise ConfigError(f"{where} is '{text}', not one of {', '.join(self.choices)}")
            return text
        try:
            if isinstance(value, bool):
                raise ValueError
            number = self.kind(value) if not isinstance(value, str) else self.kind(float(value))
            if self.kind is int and float(value) != int(float(value)):
                raise ValueError
        except (TypeError, ValueError):
            kind = "a whole number" if self.kind is int else "a number"
            raise ConfigError(f"{where} must be {kind} (got {value!r})") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be finite (got {value!r})")
        if self.minimum is not None and number < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum:g} (got {value!r})")
        if self.maximum is not None and number > self.maximum:
            raise ConfigError(f"{where} must be <= {self.maximum:g} (got {value!r})")
        return number


@dataclass
class Features:
    """One (micro-)batch's features, rows in sample order: student image ``img`` (n, d), captions ``cap`` (n, d),
    student spurious texts ``s_sp`` (n, d), teacher image ``t_img`` (n, d) and spurious texts ``t_sp`` (n, d)
    (None when the method needs none), ``scale`` = exp(logit_scale) (scalar), and ``extra``: the method's own
    per-sample rows without gradient (:meth:`Method.teacher_features`, e.g. an EMA teacher's features)."""

    img: torch.Tensor
    cap: torch.Tensor
    s_sp: torch.Tensor | None
    scale: torch.Tensor
    t_img: torch.Tensor | None
    t_sp: torch.Tensor | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def cat(parts: Sequence[Features], scale: torch.Tensor) -> Features:
        """The micro-batches' features as one batch (rows concatenated in order), with ``scale``."""

        import torch

        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values, dim=0)

        extra = {k: torch.cat([p.extra[k] for p in parts], dim=0) for k in parts[0].extra}
        return Features(join("img"), join("cap"), join("s_sp"), scale, join("t_img"), join("t_sp"), extra)  # type: ignore[arg-type]


@dataclass
class RunContext:
    """What a method sees of the run. ``student`` is the open_clip model being trained; ``teacher`` a frozen,
    eval-mode copy of the zero-shot model (None unless the method needs it); ``head`` the zero-shot-initialised
    classification head, ``nn.Linear(d, C, bias=False)`` with weights ``exp(logit_scale) x`` the normalised class
    text features (None for contrastive methods); ``tokenizer`` maps ``list[str]`` to ``LongTensor (n, L)``;
    ``templates`` the zero-shot templates (each with one ``{}``); ``total_steps`` the run's optimizer steps."""

    student: Any
    teacher: Any | None
    head: Any | None
    tokenizer: Callable[..., Any]
    classnames: Sequence[str]
    templates: Sequence[str]
    device: Any
    env: DistEnv
    seed: int = 0
    total_steps: int = 1
    config: Any = None


@dataclass
class ClassifierBatch:
    """One micro-batch for a classifier method: ``logits`` (n, C) float32 from the head, ``image`` (n, d) the
    student's normalised image features, ``teacher_image`` (n, d) the teacher's (no gradient; None unless the
    method needs a teacher), ``labels`` (n,) long, ``step`` the 0-based optimizer step."""

    logits: torch.Tensor
    image: torch.Tensor
    teacher_image: torch.Tensor | None
    labels: torch.Tensor
    step: int


@dataclass
class LossParts:
    """``total`` (what is back-propagated: ``main + lambda x reg``), and ``main`` and ``reg`` detached for logs."""

    total: torch.Tensor
    main: torch.Tensor
    reg: torch.Tensor


class Method:
    """Base class of a fine-tuning method (see the module docstring). Subclasses set the class attributes and
    override the hooks they need; :func:`starft_cli.train.methods.register` makes one available by ``name``.

    ``hp`` is the method's resolved hyper-parameters (every :class:`HParam` present, checked), ``config`` the
    run's :class:`~starft_cli.train.config.TrainConfig` (None in unit tests of a loss).
    """

    name: ClassVar[str]
    title: ClassVar[str]  # one line
    source: ClassVar[str]  # authors, title, venue, year
    loss_doc: ClassVar[str]  # the loss as an equation in words
    objective: ClassVar[str]  # "contrastive" or "classifier"
    needs_teacher: ClassVar[bool] = False  # a frozen copy of the zero-shot model (ctx.teacher)
    needs_pool: ClassVar[bool] = False  # the StarFT spurious pool (--pool): spurious-text features per sample
    regularized: ClassVar[bool] = False  # a regulariser weighted by --lambda on --lambda-schedule
    default_lambda: ClassVar[float] = 0.0  # the paper's weight, used when --lambda is not given
    default_lambda_schedule: ClassVar[str] = "linear"  # the paper's schedule of it (--lambda-schedule)
    hparams: ClassVar[tuple[HParam, ...]] = ()
    # classifier methods: train the unit-norm head times the zero-shot model's fixed exp(logit_scale), not the
    # scaled head (:mod:`starft_cli.train.heads`)
    fixed_head_scale: ClassVar[bool] = False
    # contrastive methods: the method chooses each sample's caption (:meth:`Method.captions`)
    own_captions: ClassVar[bool] = False

    def __init__(self, hp: Mapping[str, Any] | None = None, config: Any = None) -> None:
        self.hp = resolve_hparams(type(self), hp or {})
        self.config = config

    # --- what the run is made of ------------------------------------------------------------------------
    def trainable(self, name: str, stage: str) -> bool:
        """Whether parameter ``name`` (as in ``student.named_parameters()``; the head is ``head.weight``) trains
        in ``stage``. Contrastive methods train every parameter (the text tower too unless ``--freeze-text``);
        classifier methods the image tower and the head."""
        if self.objective == "classifier":
            return name.startswith("visual.") or name.startswith("head.")
        if self.config is not None and self.config.freeze_text:
            return name.startswith("visual.") or name.startswith("logit_")
        return True

    def stages(self, total_steps: int) -> list[tuple[str, int]]:
        """The run's stages in order, as (name, number of steps); they add up to ``total_steps``."""
        return [("main", total_steps)]

    def stage_at(self, step: int, total_steps: int) -> tuple[str, int, int]:
        """(stage name, its first step, its number of steps) of 0-based ``step``."""
        start = 0
        stages = self.stages(total_steps)
        for name, length in stages:
            if step < start + length:
                return name, start, length
            start += length
        name, length = stages[-1]
        return name, start - length, length

    def learning_rate(self, step: int, total_steps: int, base_lr: float, warmup: int) -> float:
        """The learning rate of ``step``: linear warm-up then cosine decay over the run (the FLYP/StarFT schedule)."""
        from starft_cli.train.schedules import cosine_lr

        return cosine_lr(step, base_lr, warmup, total_steps)

    # --- hooks ------------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        """Once per run, after the models and head exist and before the optimizer: per-run constants."""

    def begin_step(self, ctx: RunContext, step: int) -> None:
        """Once per optimizer step, before its micro-batches: per-step constants for the whole batch."""

    def classifier_loss(self, batch: ClassifierBatch, lam: float, ctx: RunContext) -> LossParts:
        """A classifier method's loss of one micro-batch, a mean over its rows."""
        raise NotImplementedError(f"{self.name} is not a classifier method")

    def regularizer(self, features: Features, labels: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """A contrastive method's batch-coupled regulariser (scalar) of this process's rows of ``features``."""
        raise NotImplementedError(f"{self.name} has no regulariser")

    def teacher_features(self, ctx: RunContext, images: torch.Tensor, caption_tokens: torch.Tensor) -> dict[str, Any]:
        """Extra per-sample rows (no gradient) that :meth:`regularizer` reads from ``features.extra``."""
        return {}

    def weight_penalty(self, ctx: RunContext) -> torch.Tensor | None:
        """A parameter-space term, already weighted, added once per optimizer step; None for none."""
        return None

    def captions(self, ctx: RunContext, step: int, index: torch.Tensor, labels: torch.Tensor) -> list[str] | None:
        """A contrastive method's caption of each sample of a micro-batch (``index``: the samples' dataset indices,
        ``labels`` their classes, both (n,)), or None for the data's own (its captions, else the class caption).
        Must be a function of (seed, step, index) only, for exact resume; used when :attr:`own_captions` is set."""
        return None

    def end_step(self, ctx: RunContext, step: int) -> None:
        """After the optimizer step (e.g. an EMA update)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state that a checkpoint must hold for an exact resume (tensors)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    # --- description -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The method and its hyper-parameters in one short line, e.g. ``l2-sp (alpha=0.1, beta=0)`` or
        ``starft (lambda=0.5, schedule=linear, pool=background)``."""
        shown: dict[str, Any] = {}
        if self.regularized and self.config is not None:
            shown["lambda"] = self.config.reg_lambda
            shown["schedule"] = self.config.lambda_schedule
        if self.needs_pool and self.config is not None:
            shown["pool"] = self.config.pool
        shown.update(self.hp)
        if not shown:
            return self.name
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()]
        return f"{self.name} ({', '.join(parts)})"


def _shared_setting_hint(key: str) -> str:
    """Settings every regularised method shares are run settings, not hyper-parameters of one method."""
    shared = {"lambda": "lambda", "reg_lambda": "lambda", "lambda_schedule": "lambda-schedule", "pool": "pool"}
    return f"It is a run setting: use `starft finetune --{shared[key]} ...`" if key in shared else ""


def resolve_hparams(method: type[Method], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of ``method``: the ``given`` values checked, the paper's defaults for the rest.

    Raises:
        ConfigError: a name the method does not have (with the names it has), or a bad value.
    """
    from starft_cli.errors import ConfigError
    from starft_cli.suggest import did_you_mean

    known = {p.name: p for p in method.hparams}
    for key in given:
        if key not in known:
            names = ", ".join(known) if known else "none"
            raise ConfigError(
                f"{method.name} has no hyper-parameter '{key}' (it has: {names})",
                _shared_setting_hint(key)
                or did_you_mean(key, known, n=1, quote=True)
                or f"See `starft finetune --method {method.name} --help-method`",
            )
    return {name: p.parse(given[name], method.name) if name in given else p.default for name, p in known.items()}
