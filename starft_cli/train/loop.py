"""``finetune(config) -> run_dir``: any registered method (:mod:`starft_cli.train.methods`), single- or
multi-process.

A run goes through four phases, each a method of :class:`_Trainer`: set-up (models, the method's teacher and
head, towers, optimizer, the step), restore (the training state of ``checkpoints/last`` on resume), fit (the
epochs and their optimizer steps) and validate (ID validation at each epoch end; ``checkpoints/best``). The loop
names no method: it builds what the method declares it needs and calls its hooks.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starft_cli.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from starft_cli.train.checkpoint import LOCK_NAME, RunDir, load_training_state, run_lock, save_training_checkpoint
from starft_cli.train.config import TrainConfig, check_resume, config_from_json

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


def method_name(config: TrainConfig) -> str:
    """The run's method (kept for callers of 0.2; it is ``config.method``)."""
    return config.method


def default_out(config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{config.method}-{stamp}")


@dataclass
class Prepared:
    """What is checked and loaded before any model: data, pools, run directory."""

    config: TrainConfig
    run: RunDir
    dataset: Any
    val_dataset: Any | None
    pool: list[str]
    resume_from: Path | None
    model_ref: Any = None
    train_indices: list[int] | None = None  # the training part of --val-data holdout:FRACTION (None: every sample)
    data_id: dict[str, Any] | None = None  # the training data's identity (RUN/data.json), when it is needed


def prepare(config: TrainConfig) -> Prepared:
    """Validate everything that needs no model: the run directory, the data, the pool."""
    from starft_cli.data.registry import load_dataset
    from starft_cli.prompts import load_pool

    if config.out is None:
        config = config.replace(out=default_out(config))
    run = RunDir(config.out)
    resume_from = None
    if config.resume:
        if run.config.is_file():
            check_resume(config, config_from_json(run.config.read_text(encoding="utf-8"), str(run.config)))
            resume_from = run.find_checkpoint("last")
        elif run.root.exists() and any(p.name != LOCK_NAME for p in run.root.iterdir()):
            raise CheckpointError(f"{run.root} is not a starft run (no config.json)", "Check `out`", param="out")
        else:  # restart scripts pass --resume from the first try on: say so and start
            logger.info("no run at %s: starting a new one", run.root)
    elif run.config.is_file():
        raise CheckpointError(
            f"{run.root} already holds a run",
            "Pass `resume` to continue it, or choose another `out`",
            param=("resume", "out"),
        )
    dataset = load_dataset(config.data, config.data_root, config.split, classnames_file=config.classnames)
    from starft_cli.train.methods import get_method

    method = get_method(config.method)
    if len(dataset.classnames) < 2:
        raise DataError(f"{config.data} has {len(dataset.classnames)} class; fine-tuning needs at least two")
    data_id = _check_same_data(run, dataset, config) if config.resume and run.config.is_file() else None
    pool = load_pool(config.pool) if method.needs_pool else []
    val, train_indices = _holdout(config, dataset)
    if config.val_data and val is None:
        val = load_dataset(config.val_data, config.val_data_root or config.data_root, config.val_split)
    if val is not None:
        from starft_cli.train.validate import GROUP_CRITERIA

        if config.select_by in GROUP_CRITERIA and val.groups is None:
            raise DataError(
                f"`select_by` {config.select_by} needs a validation set with groups, and {config.val_data} has none",
                "Use `select_by` top1, or validate on data with groups (e.g. waterbirds)",
                param="select_by",
            )
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "`tensorboard` needs the tensorboard package",
                "pip install 'starft[tensorboard]', or drop `tensorboard`",
                param="tensorboard",
            ) from None
    from starft_cli.models import parse_model_ref

    ref = parse_model_ref(config.backbone, arch=config.arch)  # a bad reference fails here, before any loading
    return Prepared(config, run, dataset, val, pool, resume_from, ref, train_indices, data_id)


def _holdout(config: TrainConfig, dataset: Any) -> tuple[Any | None, list[int] | None]:
    """``--val-data holdout:FRACTION``: (the held-out samples as a validation set, the training indices); (None,
    None) for any other validation data.

    Raises:
        DataError: the fraction holds out no sample (too few images per class).
    """
    from starft_cli.train.holdout import IndexView, holdout_split, parse_holdout

    fraction = parse_holdout(config.val_data)
    if fraction is None:
        return None, None
    train, held = holdout_split(dataset.labels, fraction, config.seed)
    if not held:
        raise DataError(
            f"`val_data` {config.val_data} holds out no image of {config.data} ({len(dataset)} images; at most all but "
            "one of each class are held out)",
            "Raise the fraction, or validate on other data",
            param="val_data",
        )
    return IndexView(dataset, held, f"{config.data} ({config.val_data})"), train


def _check_same_data(run: RunDir, dataset: Any, config: TrainConfig) -> dict[str, Any] | None:
    """The training data's identity now, refused when it is not the one the run recorded at its start.

    Raises:
        DataError: the data changed (classes added, removed or reordered; other images in a class), named.
    """
    import json

    from starft_cli.train.dataid import data_identity, describe_changes, identity_changes

    now = data_identity(dataset)
    if not run.data_identity.is_file():  # a run of an older version: nothing to compare with
        return now
    try:
        before = json.loads(run.data_identity.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {run.data_identity} ({exc})", "Restore it from a backup") from None
    changes = identity_changes(before, now)
    if changes:
        raise DataError(
            f"{run.root} was trained on other data than {config.data} holds now: {describe_changes(changes)}",
            "Resume on the data the run started on, or start a new run with another `out`",
            param="out",
        )
    return now


def finetune(config: TrainConfig, progress: ProgressFn | None = None) -> Path:
    """Fine-tune as ``config`` says; return the run directory. Under torchrun every process calls this.

    ``progress`` receives events (dicts with ``kind``: start, step, validation, checkpoint, done, or finished when
    ``--resume`` finds the run complete).

    Raises:
        TrainingDiverged: a non-finite loss or gradient (beyond ``max_bad_steps`` skipped steps) or non-finite
            weights at a checkpoint; the previous checkpoint is kept.
        RunInUseError: another process is writing ``--out`` (its PID and host are named).
        StarftError: bad settings, data, devices or run directory (checked before any model is loaded).
    """
    from starft_cli.train.distributed import env_from_environment

    if config.out is None:
        config = config.replace(out=default_out(config))
    env = env_from_environment()
    if env.is_main:  # one writer per run directory: a second process on the same --out is refused
        with run_lock(config.out):
            run = RunDir(config.out)
            if config.resume and not env.distributed and run.config.is_file():  # (others may be reading it)
                for name in run.recover():
                    logger.warning("checkpoints/%s: restored the previous checkpoint after an interrupted save", name)
            return _finetune(config, env, progress)
    return _finetune(config, env, progress)


def _finetune(config: TrainConfig, env: Any, progress: ProgressFn | None) -> Path:
    from starft_cli.device import cuda_call_args, resolve_device
    from starft_cli.train.distributed import destroy_process_group, device_for, init_process_group

    prepared = prepare(config)
    device = device_for(env, resolve_device(prepared.config.device))
    calls = cuda_call_args(device)
    if calls.set_device is not None:
        import torch

        torch.cuda.set_device(calls.set_device)
    init_process_group(env, device)
    try:
        return _Trainer(prepared, env, device, progress).run()
    finally:
        destroy_process_group()


@dataclass
class _Plan:
    """The run's shape: the per-process micro-batch, steps per epoch and in all."""

    micro: int
    steps_per_epoch: int
    total_steps: int


@dataclass
class _Position:
    """Where the run is: optimizer steps done, the epoch and the steps done in it, the best --select-by value."""

    step: int = 0
    epoch: int = 0
    in_epoch: int = 0
    best: float | None = None


class _Trainer:
    def __init__(self, prepared: Prepared, env: Any, device: Any, progress: ProgressFn | None) -> None:
        from starft_cli.train.methods import make_method

        self.p = prepared
        self.cfg = prepared.config
        self.env = env
        self.device = device
        self.progress = progress or (lambda event: None)
        self.run_dir = prepared.run
        self.method = make_method(self.cfg.method, self.cfg.hparams, self.cfg)
        self.bad_steps = 0  # steps skipped for a non-finite loss or gradient (--max-bad-steps)
        self.last_saved: int | None = None  # step of the newest checkpoints/last
        self.head: Any = None
        self.unused: set[str] = set()  # parameters the objective never reaches (frozen)
        self.unreadable_seen: set[str] = set()  # unreadable training images met by this process
        self.stage: str | None = None

    # -------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        plan = self._plan()
        state = load_training_state(self.p.resume_from) if self.p.resume_from is not None else None
        if state is not None and state["step"] >= plan.total_steps:  # nothing left to do: say so, touch nothing
            self._event("finished", step=state["step"], total_steps=plan.total_steps, best=state.get("best"))
            return self.run_dir.root
        started = time.perf_counter()
        self._setup(plan, state)
        pos = self._restore(state)
        self._announce(plan, pos)
        self._fit(plan, pos)
        from starft_cli.train.distributed import barrier

        if self.tb is not None:
            self.tb.close()
        barrier(self.env)
        self._event(
            "done",
            step=pos.step,
            total_steps=plan.total_steps,
            best=pos.best,
            seconds=time.perf_counter() - started,
            bad_steps=self.bad_steps,
            unreadable=len(self.unreadable_seen),
        )
        return self.run_dir.root

    def _event(self, kind: str, **fields: Any) -> None:
        self.progress({"kind": kind, "run_dir": str(self.run_dir.root), "select_by": self.cfg.select_by, **fields})

    def _train_size(self) -> int:
        """The samples an epoch draws from: the training data less a held-out validation part."""
        indices = self.p.train_indices
        return len(self.p.dataset) if indices is None else len(indices)

    def _plan(self) -> _Plan:
        from starft_cli.train import schedules

        cfg, world, accum = self.cfg, self.env.world_size, self.cfg.grad_accum
        if cfg.batch_size % (world * accum):
            raise ConfigError(
                f"`batch_size` {cfg.batch_size} is not divisible by {world} processes x `grad_accum` {accum}",
                "The global batch is split evenly over processes and micro-batches",
                param=("batch_size", "grad_accum"),
            )
        micro = cfg.batch_size // (world * accum)
        n = self._train_size()
        steps_per_epoch = schedules.steps_per_epoch(n, world, micro, accum, cfg.last_batch)
        if steps_per_epoch == 0:
            raise DataError(
                f"{cfg.data} has {n} images, fewer than one batch of {cfg.batch_size}",
                "Lower `batch_size`",
                param="batch_size",
            )
        total = cfg.epochs * steps_per_epoch
        return _Plan(micro, steps_per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps))

    # --- set-up ----------------------------------------------------------------------------------------
    def _setup(self, plan: _Plan, state: dict[str, Any] | None) -> None:
        """Models (student, the method's teacher and head), the method's per-run constants, the optimizer and
        the step function."""
        import torch

        from starft_cli import models
        from starft_cli.train.methods import RunContext

        cfg, method, dataset = self.cfg, self.method, self.p.dataset
        torch.manual_seed(cfg.seed)
        ref = self.p.model_ref or cfg.backbone
        self.base = base = models.load(ref, device=self.device, arch=cfg.arch, seed=cfg.seed)
        student = base.model
        if cfg.grad_accum > 1:
            self._refuse_inexact_accumulation(student, plan)
        teacher = copy.deepcopy(student).eval().requires_grad_(False) if method.needs_teacher else None
        if cfg.grad_checkpointing:
            student.set_grad_checkpointing(True)
        student.train()
        templates = self._templates()
        if method.objective == "classifier":
            self.head = self._make_head(student, base.tokenizer, dataset, templates)
            if state is not None and "head" in state:
                self.head.weight.data.copy_(state["head"])
        self.ctx = RunContext(
            student, teacher, self.head, base.tokenizer, list(dataset.classnames), templates, self.device,
            self.env, cfg.seed, plan.total_steps, cfg,
        )  # fmt: skip
        method.setup(self.ctx)  # sees the zero-shot weights (L2-SP's anchor, an EMA's start), also on resume
        self.unused = self._unused_parameters(student, plan)
        if self.env.is_main and not self.run_dir.config.is_file():  # after the last check that needs the model
            self.run_dir.write_config(self.cfg.to_json())
        if self.env.is_main and not self.run_dir.data_identity.is_file():
            from starft_cli.paths import atomic_write_text
            from starft_cli.train.dataid import data_identity, identity_json

            identity = self.p.data_id or data_identity(dataset)
            atomic_write_text(self.run_dir.data_identity, identity_json(identity))
        if state is not None:
            student.load_state_dict(models.read_state_dict(self.p.resume_from / models.WEIGHTS_NAME), strict=True)
        from starft_cli.train.step import Towers

        self.towers = Towers(student, self.head, trim=cfg.step_impl == "efficient").to(self.device)
        self._set_stage(method.stage_at(state["step"] if state else 0, plan.total_steps)[0], fresh=True)
        self._make_optimizer(plan)
        self._make_step(plan, teacher)

    def _unused_parameters(self, student: Any, plan: _Plan) -> set[str]:
        """The student's parameters that train in some stage but that the objective never reaches (e.g. a SigLIP
        model's ``logit_bias`` under the softmax contrastive loss, a text tower's unused pooler): they are frozen
        and named in the log. Trained, they would get no gradient, which multi-process training (DDP) refuses.

        Found by one forward and backward of two blank images (and two captions) through the towers the objective
        uses, plus the method's weight penalty, in eval mode (no running statistics change, no random draw)."""
        import torch

        from starft_cli.train.step import Towers

        stages = [name for name, _ in self.method.stages(plan.total_steps)]
        params = {n: p for n, p in student.named_parameters() if any(self.method.trainable(n, s) for s in stages)}
        if not params:
            return set()
        size = self.base.preprocess_cfg.get("size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        images = torch.zeros(2, 3, int(height), int(width), device=self.device)
        modes = [(m, m.training) for m in student.modules()]
        wanted = [(p, p.requires_grad) for p in params.values()]
        student.eval()
        if self.cfg.grad_checkpointing:  # (a re-entrant checkpoint would hide its parameters from autograd.grad)
            student.set_grad_checkpointing(False)
        try:
            for p in params.values():
                p.requires_grad_(True)
            if self.method.objective == "classifier":
                outputs = list(Towers(student, self.head)(images))
            else:
                tokens = self.base.tokenizer(["a photo.", "a photo of a photo."]).to(self.device)
                outputs = list(Towers(student, trim=self.cfg.step_impl == "efficient")(images, tokens))
            penalty = self.method.weight_penalty(self.ctx)
            total = sum(o.float().sum() for o in outputs) + (penalty if penalty is not None else 0.0)
            grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        finally:
            for module, training in modes:
                module.training = training
            for p, requires in wanted:
                p.requires_grad_(requires)
            if self.cfg.grad_checkpointing:
                student.set_grad_checkpointing(True)
        unused = {n for (n, _), g in zip(params.items(), grads, strict=True) if g is None}
        if unused:
            logger.info("not trained, as the loss does not use them: %s", ", ".join(sorted(unused)))
        return unused

    def _refuse_inexact_accumulation(self, student: Any, plan: _Plan) -> None:
        """``grad_accum`` > 1 is exact only when no layer normalises with batch statistics: a BatchNorm layer that
        runs in training mode in some stage normalises each micro-batch by its own mean and variance (and updates
        its running statistics once per micro-batch), so the step cannot equal the unaccumulated one.

        Raises:
            ConfigError: such a layer exists (the first is named, with their number).
        """
        from torch.nn.modules.batchnorm import _BatchNorm

        stages = [name for name, _ in self.method.stages(plan.total_steps)]
        found: list[str] = []
        for child_name, child in student.named_children():  # a child none of whose parameters train runs in eval
            names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
            trains = not names or any(self.method.trainable(n, s) for n in names for s in stages)
            for name, module in child.named_modules():
                if isinstance(module, _BatchNorm) and (trains or not module.track_running_stats):
                    found.append(f"{child_name}.{name}" if name else child_name)
        if found:
            raise ConfigError(
                f"`grad_accum` {self.cfg.grad_accum} would not be exact with {self.cfg.backbone}: it has {len(found)} "
                f"BatchNorm layer(s) in training mode (e.g. {found[0]}), which normalise each micro-batch with its own "
                "statistics",
                "Drop `grad_accum` (lower `batch_size`, or save memory with `grad_checkpointing`)",
                param=("grad_accum", "batch_size", "grad_checkpointing"),
            )

    def _templates(self) -> list[str]:
        from starft_cli.prompts import load_templates

        return load_templates(self.cfg.val_templates or getattr(self.p.dataset, "templates", None) or "imagenet80")

    def _set_stage(self, stage: str, fresh: bool = False) -> None:
        """Which parameters train in ``stage``; entering a later stage restarts the optimizer's moments and (under
        DDP) the wrapper, whose set of trained parameters is fixed when it is built."""
        for name, param in self.towers.clip.named_parameters():
            param.requires_grad_(self.method.trainable(name, stage) and name not in self.unused)
        if self.head is not None:
            self.head.weight.requires_grad_(self.method.trainable("head.weight", stage))
        self._train_mode()
        if not fresh:
            logger.info("stage %s begins", stage)
            self.optimizer.state.clear()
            self._wrap()
        self.stage = stage

    def _train_mode(self) -> None:
        """The student in training mode, except its towers none of whose parameters train in this stage: those run
        in eval mode, so a frozen tower's features are the pre-trained model's (BatchNorm keeps its running
        statistics during a linear probe, dropout is off)."""
        student = self.towers.clip
        student.train()
        for child in student.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()

    def _wrap(self) -> None:
        self.wrapped = self.towers
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            from starft_cli.device import cuda_call_args

            self.wrapped = DistributedDataParallel(self.towers, **cuda_call_args(self.device).ddp)
        if hasattr(self, "step_fn"):
            self.step_fn.towers = self.wrapped

    def _make_optimizer(self, plan: _Plan) -> None:
        """AdamW over every parameter that trains in some stage; ``wd_scope`` says which decay
        (:func:`starft_cli.train.optim.decay_groups`)."""
        import torch

        from starft_cli.device import cuda_call_args

        stages = [name for name, _ in self.method.stages(plan.total_steps)]
        clip_names = {n for n, _ in self.towers.clip.named_parameters()}

        def trains(name: str) -> bool:
            local = name.removeprefix("clip.") if name.removeprefix("clip.") in clip_names else name
            return local not in self.unused and any(self.method.trainable(local, s) for s in stages)

        from starft_cli.train.optim import decay_groups

        params = [(n, p) for n, p in self.towers.named_parameters() if trains(n)]
        calls = cuda_call_args(self.device)
        self.optimizer = torch.optim.AdamW(
            decay_groups(params, self.cfg.wd, self.cfg.wd_scope),
            lr=self.cfg.lr,
            fused=calls.fused_adamw,
        )
        self.scaler = torch.amp.GradScaler(calls.scaler_device, enabled=self.cfg.precision == "fp16")
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.cfg.precision]
        self._wrap()

    def _make_step(self, plan: _Plan, teacher: Any) -> None:
        from starft_cli.train.bank import class_captions
        from starft_cli.train.step import ClassifierStep, StarStep

        cfg, dataset = self.cfg, self.p.dataset
        self.micro = plan.micro
        self.captions = dataset.captions
        self.class_caps = self.captions is None and not self.method.own_captions
        self.default_captions = class_captions(dataset.classnames, cfg.caption_template)
        if self.method.objective == "classifier":
            self.step_fn: Any = ClassifierStep(self.wrapped, teacher, self.method, self.ctx, self.autocast_dtype)
            return
        bank = None
        banked = self.class_caps and (self.method.needs_pool or cfg.freeze_text)
        if cfg.step_impl == "efficient" and banked:
            bank = self._bank(teacher if teacher is not None else self.towers.clip, self.base.tokenizer, dataset)
        self.step_fn = StarStep(
            towers=self.wrapped,
            clip=self.towers.clip,
            teacher=teacher,
            tokenizer=self.base.tokenizer,
            pool=self.p.pool or ["{}"],
            method=self.method,
            ctx=self.ctx,
            freeze_text=cfg.freeze_text,
            impl=cfg.step_impl,
            bank=bank,
            env=self.env,
            autocast_dtype=self.autocast_dtype,
        )

    # --- restore ---------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any] | None) -> _Position:
        """The position, optimizer, scaler, method state and RNG of ``checkpoints/last`` (a fresh start without)."""
        import torch

        if self.cfg.resume and self.env.is_main:
            self.run_dir.truncate_metrics(state["step"] if state else 0)  # steps after the checkpoint are redone
        if state is None:
            return _Position()
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.cfg.precision == "fp16":
            self.scaler.load_state_dict(state["scaler"])
        if "method" in state:
            self.method.load_state_dict(state["method"])
        pos = _Position(state["step"], state["epoch"], state["step_in_epoch"], state.get("best"))
        self.bad_steps = int(state.get("bad_steps", 0))
        self.last_saved = pos.step
        saved_world = state.get("world_size", 1)
        if saved_world != self.env.world_size and pos.in_epoch:
            logger.warning(
                "resuming with %d processes a run saved with %d: the rest of epoch %d is drawn for the new process "
                "count, so it is not bitwise the run an unchanged setup would give",
                self.env.world_size,
                saved_world,
                pos.epoch,
            )
        torch.set_rng_state(state["rng_cpu"])
        where = (self.run_dir.root, pos.step, pos.epoch, pos.in_epoch)
        logger.info("resuming %s at step %d (epoch %d, step %d of it)", *where)
        return pos

    def _announce(self, plan: _Plan, pos: _Position) -> None:
        """The start event, the schedule's warnings, TensorBoard."""
        from starft_cli.train.schedules import schedule_warnings

        cfg, n = self.cfg, self._train_size()
        self._event("start", total_steps=plan.total_steps, step=pos.step)
        self.tb = None
        if cfg.tensorboard and self.env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, events of the steps after the checkpoint (logged before the interruption, redone now) are
            # purged, as metrics.jsonl's are: TensorBoard drops events at or after ``purge_step`` written earlier.
            purge = pos.step + 1 if cfg.resume else None
            self.tb = SummaryWriter(str(self.run_dir.root / "tensorboard"), purge_step=purge)
        if not self.env.is_main:
            return
        for warning in schedule_warnings(
            reg="star" if self.method.regularized else "none",
            schedule=cfg.lambda_schedule,
            base_lambda=float(cfg.reg_lambda or 0.0),
            epochs=cfg.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            warmup=cfg.warmup if not _overrides(self.method, "learning_rate") else 0,  # e.g. LP-FT: per stage
            lr=cfg.lr,
        ):
            logger.warning("%s", warning)
        from starft_cli.train.holdout import selection_warnings

        val = self.p.val_dataset
        for warning in selection_warnings(cfg.val_data, getattr(val, "split", None), cfg.data, cfg.split):
            logger.warning("%s", warning)
        if self.p.train_indices is not None:
            logger.info(
                "%s: %d of the %d training images are held out for validation (never trained on)",
                cfg.val_data,
                len(val),
                len(self.p.dataset),
            )
        used = min(n, plan.steps_per_epoch * cfg.batch_size)
        if n - used >= 0.1 * n:
            logger.warning(
                "each epoch trains on %d of the %d images (whole batches of %d only; the %d left over are drawn "
                "anew each epoch): lower --batch-size to use more of them",
                used,
                n,
                cfg.batch_size,
                n - used,
            )

    # --- fit -------------------------------------------------------------------------------------------
    def _fit(self, plan: _Plan, pos: _Position) -> None:
        """The epochs from ``pos`` on: data loading in the same order for every method of a seed."""
        import torch

        from starft_cli.data.pipeline import TrainSamples, batch_normalizer, train_transform
        from starft_cli.device import cuda_call_args
        from starft_cli.threads import checked_workers
        from starft_cli.train.sampling import ResumableSampler
        from starft_cli.train.unreadable import SkipUnreadable

        cfg, env = self.cfg, self.env
        transform = train_transform(self.base.preprocess_cfg, normalize=False)
        samples = SkipUnreadable(TrainSamples(self.p.dataset, transform, seed=cfg.seed), strict=cfg.strict)
        self.normalize = batch_normalizer(self.base.preprocess_cfg)
        sampler = ResumableSampler(len(self.p.dataset), env.world_size, env.rank, cfg.seed, self.p.train_indices)
        while pos.epoch < cfg.epochs and pos.step < plan.total_steps:
            samples.epoch = pos.epoch
            sampler.set_position(pos.epoch, pos.in_epoch * cfg.grad_accum * plan.micro)
            loader = torch.utils.data.DataLoader(
                samples,
                batch_size=plan.micro,
                sampler=sampler,
                num_workers=checked_workers(cfg.workers),
                drop_last=cfg.last_batch == "drop",
                pin_memory=cuda_call_args(self.device).pin_memory,
                persistent_workers=False,
            )
            batches = iter(loader)
            while pos.in_epoch < plan.steps_per_epoch and pos.step < plan.total_steps:
                if self._train_one_step(plan, pos, batches):
                    break
            del batches, loader

    def _train_one_step(self, plan: _Plan, pos: _Position, batches: Any) -> bool:
        """One optimizer step at ``pos`` (advanced), its record, validation and checkpoints at an epoch end;
        True at the end of an epoch."""
        from starft_cli.train.distributed import mean_over_ranks
        from starft_cli.train.schedules import reg_lambda

        cfg, method = self.cfg, self.method
        started = time.perf_counter()
        stage = method.stage_at(pos.step, plan.total_steps)[0]
        if stage != self.stage:
            self._set_stage(stage)
        lr = method.learning_rate(pos.step, plan.total_steps, cfg.lr, cfg.warmup)
        lam = 0.0
        if method.regularized:
            lam = reg_lambda(
                pos.epoch, cfg.epochs, float(cfg.reg_lambda or 0.0), cfg.lambda_schedule, pos.step, plan.total_steps
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums, bad = self._optimizer_step(batches, pos.step, lam)
        pos.step += 1
        pos.in_epoch += 1
        loss, main, reg, penalty = mean_over_ranks(sums, self.env)
        record = {
            "step": pos.step,
            "epoch": pos.epoch,
            "loss": loss,
            "contrastive": main,
            "reg": None if math.isnan(reg) and bad is None else reg,  # None: skipped, its weight is 0
            "lambda": lam,
            "lr": lr,
            "images_per_s": cfg.batch_size / max(time.perf_counter() - started, 1e-9),
        }
        if _overrides(method, "weight_penalty"):
            record["penalty"] = penalty
        if stage != "main":
            record["stage"] = stage
        self._log(record, bad, plan)
        epoch_end = pos.in_epoch >= plan.steps_per_epoch
        if epoch_end:
            pos.epoch, pos.in_epoch = pos.epoch + 1, 0
            if self.p.val_dataset is not None:
                pos.best = self._after_epoch(pos.epoch - 1, pos.step, pos.best)
        if (cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0) or epoch_end or pos.step >= plan.total_steps:
            self._save("last", pos.step, pos.epoch, pos.in_epoch, pos.best)
        return epoch_end

    def _log(self, record: dict[str, Any], bad: str | None, plan: _Plan) -> None:
        """A step's record: metrics.jsonl (every --log-every steps, the last and every skipped one), TensorBoard,
        the progress event; a skipped step counts against --max-bad-steps."""
        step = record["step"]
        if bad is not None:
            self.bad_steps += 1
            record.update(skipped=f"non-finite {bad}", bad_steps=self.bad_steps)
        if self.env.is_main and (step % self.cfg.log_every == 0 or step == plan.total_steps or bad is not None):
            self.run_dir.append_metrics(record)  # non-finite values are written as null
            if self.tb is not None:
                for key in ("loss", "contrastive", "reg", "lambda", "lr", "images_per_s"):
                    if record[key] is not None and math.isfinite(record[key]):
                        self.tb.add_scalar(f"train/{key}", record[key], step)
        if bad is not None:
            self._bad_step(step, bad, record["loss"])
        self.progress({"kind": "step", "total_steps": plan.total_steps, **record})

    def _optimizer_step(self, batches: Any, step: int, lam: float) -> tuple[Any, str | None]:
        """Forward and backward one step (``grad_accum`` micro-batches) and step the optimizer; return (loss,
        main loss, regulariser, weight penalty) of the whole batch as a float64 tensor, and why the step was
        skipped (non-finite "loss" or "gradient"; None when it was taken).

        Accumulation is exact: a classifier method's loss is a per-sample mean (each micro-batch's share is
        back-propagated), and the batch-coupled contrastive loss and regulariser go through
        :meth:`StarStep.accumulate`; template draws are per step, sliced per micro-batch, as without it. The
        method's weight penalty joins the last micro-batch's loss, once per step.
        """
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        self.method.begin_step(self.ctx, step)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        if self.method.objective == "contrastive":
            self._contrastive_passes(batches, step, lam, sums)
        else:
            self._classifier_passes(batches, step, lam, sums)
        bad = self._nonfinite(sums[0])
        if bad is None:
            self.scaler.step(self.optimizer)  # fp16: the scaler itself skips steps with inf/NaN scaled gradients
            self.scaler.update()
            self.method.end_step(self.ctx, step)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return sums, bad

    def _backward(self, sums: Any) -> Callable[[Any], None]:
        """``backward(loss)`` for each of the step's ``grad_accum`` passes; the last one adds the method's weight
        penalty (once per step) and records it in ``sums[3]`` (and in the loss, ``sums[0]``)."""
        left = [self.cfg.grad_accum]

        def backward(loss: Any) -> None:
            left[0] -= 1
            if left[0] == 0:
                penalty = self.method.weight_penalty(self.ctx)
                if penalty is not None:
                    sums[3] += penalty.detach().to(sums.dtype)
                    sums[0] += penalty.detach().to(sums.dtype)
                    loss = loss + penalty
            self.scaler.scale(loss).backward()

        return backward

    def _next_micro(self, batches: Any) -> tuple[Any, Any, Any]:
        images, labels, index, problems = next(batches)
        for problem in problems:  # an unreadable image was replaced by the next readable one: once per file
            if problem and problem not in self.unreadable_seen:
                self.unreadable_seen.add(problem)
                logger.warning("%s; the next readable image takes its place (--strict stops instead)", problem)
        return self.normalize(images.to(self.device, non_blocking=True)), labels.to(self.device), index

    def _classifier_passes(self, batches: Any, step: int, lam: float, sums: Any) -> None:
        """Each micro-batch's share of a per-sample-mean loss, back-propagated; DDP reduces once, after the last."""
        import torch

        accum, backward = self.cfg.grad_accum, self._backward(sums)
        for m in range(accum):
            images, labels, _ = self._next_micro(batches)
            last = m == accum - 1 or not self.env.distributed
            with self.wrapped.no_sync() if not last else _null():
                out = self.step_fn(images, labels, step, lam)
                backward(out.loss / accum)
            sums[:3] += torch.stack([out.loss.detach(), out.contrastive, out.reg]).to(sums.dtype) / accum

    def _contrastive_passes(self, batches: Any, step: int, lam: float, sums: Any) -> None:
        """The batch-coupled loss over all micro-batches (:meth:`StarStep.accumulate` when there are several)."""
        import torch

        from starft_cli.train.step import MicroBatch

        cfg, env, backward = self.cfg, self.env, self._backward(sums)
        # this process's rows of the global batch, in micro-batch order
        tidx = _templates(cfg.seed, step, 0, cfg.batch_size, len(self.step_fn.pool), env).to(self.device)
        micro: list[MicroBatch] = []
        for m in range(cfg.grad_accum):
            images, labels, index = self._next_micro(batches)
            caps = [
                self.captions[i] if self.captions else self.default_captions[y]
                for i, y in zip(index.tolist(), labels.tolist(), strict=True)
            ]
            own = self.method.captions(self.ctx, step, index, labels)  # e.g. FLYP's template drawn per sample
            if own is not None:
                caps = own
            # the rows of a partial last batch (--last-batch keep) are the first len(labels) of the micro-batch's
            micro.append(MicroBatch(images, labels, caps, tidx[m * self.micro : m * self.micro + len(labels)]))
        if len(micro) == 1:
            one = micro[0]
            out = self.step_fn(one.images, one.labels, one.captions, one.template_idx, lam, self.class_caps)
            backward(out.loss)
        else:
            no_sync = self.wrapped.no_sync if env.distributed else None
            out = self.step_fn.accumulate(micro, lam, self.class_caps, backward=backward, no_sync=no_sync)
        sums[:3] += torch.stack([out.loss.detach(), out.contrastive, out.reg]).to(sums.dtype)

    def _nonfinite(self, loss: Any) -> str | None:
        """Why this step must not update the weights ("loss" or "gradient"), or None. One device sync.

        Under fp16 the gradients are left to the GradScaler (inf/NaN scaled gradients are how it finds its scale,
        and it skips those steps itself); the loss must still be finite. All processes take the same decision.
        """
        import torch

        flags = [~torch.isfinite(loss)]
        if self.cfg.precision != "fp16":
            grads = [p.grad for p in self.towers.parameters() if p.grad is not None]
            if grads:
                flags.append(~torch.stack([torch.isfinite(g).all() for g in grads]).all())
        flags_t = torch.stack(flags).to(torch.float32)
        if self.env.distributed:
            import torch.distributed as dist

            dist.all_reduce(flags_t, op=dist.ReduceOp.MAX)
        loss_bad, *grad_bad = (bool(v) for v in flags_t.tolist())
        if loss_bad:
            return "loss"
        if grad_bad and grad_bad[0]:
            return "gradient"
        return None

    def _bank(self, source: Any, tokenizer: Any, dataset: Any) -> Any:
        """The teacher's text bank for the classes present in the training data (rows of absent classes are 0)."""
        import torch

        from starft_cli import models
        from starft_cli.train.bank import TextBank, cached_bank

        present = sorted(set(dataset.labels))
        names = [dataset.classnames[c] for c in present]
        pool = self.p.pool or ["{}"]
        part = cached_bank(
            source, tokenizer, models.weights_fingerprint(source), names, self.cfg.caption_template, pool, self.device
        )
        if len(present) == len(dataset.classnames):
            return part
        rows = torch.as_tensor(present, device=self.device)
        spurious = part.spurious.new_zeros((len(dataset.classnames), *part.spurious.shape[1:]))
        captions = part.captions.new_zeros((len(dataset.classnames), part.captions.shape[1]))
        spurious[rows], captions[rows] = part.spurious, part.captions
        return TextBank(spurious=spurious, captions=captions)

    def _after_epoch(self, epoch: int, step: int, best: float | None) -> float | None:
        """ID validation at the end of an epoch; a new best ``--select-by`` value writes checkpoints/best."""
        metrics = self._validate()
        accuracy = metrics["top1"]
        by = self.cfg.select_by
        value = metrics.get(by, math.nan)
        self.progress(
            {"kind": "validation", "epoch": epoch, "accuracy": accuracy, "step": step, "select_by": by, "value": value}
        )
        if self.env.is_main:
            record = {"step": step, "epoch": epoch, "val_accuracy": accuracy}
            record.update({f"val_{k}": v for k, v in metrics.items() if k != "top1"})
            self.run_dir.append_metrics(record)
        if math.isfinite(value) and (best is None or value > best):
            best = value
            extra = {"val_accuracy": accuracy, "selected_by": by, **{f"val_{k}": v for k, v in metrics.items()}}
            self._save("best", step, epoch + 1, 0, best, with_state=False, extra=extra)
        return best

    # -------------------------------------------------------------------------------------------------
    def _save(
        self,
        name: str,
        step: int,
        epoch: int,
        in_epoch: int,
        best: float | None,
        with_state: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        import torch

        if not self.env.is_main:
            return
        state = None
        if with_state:
            state = {
                "format": 1,
                "step": step,
                "epoch": epoch,
                "step_in_epoch": in_epoch,
                "best": best,
                "world_size": self.env.world_size,
                "bad_steps": self.bad_steps,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
            }
            if self.head is not None:
                state["head"] = self.head.weight.detach().cpu()
            method_state = self.method.state_dict()
            if method_state:
                state["method"] = method_state
        metadata = {
            "method": self.cfg.method,
            "method_description": self.method.describe(),
            "base_model": self.cfg.backbone,
            "step": step,
            "epoch": epoch,
            "hyperparameters": self.cfg.to_dict(),
            **(extra or {}),
        }
        if self.head is not None:
            metadata["head_classnames"] = list(self.p.dataset.classnames)
            metadata["head_templates"] = list(self.ctx.templates)  # WiSE-FT and soups rebuild the zero-shot head
        from starft_cli.train.checkpoint import NonFiniteWeights

        try:
            self._write_checkpoint(name, metadata, state)
        except NonFiniteWeights as exc:
            raise TrainingDiverged(
                f"training diverged: the weights after step {step} are not finite ({exc}); "
                f"checkpoints/{name} was not written. {self._last_good()}",
                self._diverged_hint(),
                param=("lr", "out"),
            ) from None
        if with_state:
            self.last_saved = step
        self.progress({"kind": "checkpoint", "name": name, "step": step})

    def _write_checkpoint(self, name: str, metadata: dict[str, Any], state: dict[str, Any] | None) -> None:
        save_training_checkpoint(
            self.run_dir,
            name,
            self.towers.clip,
            self.base.model_cfg,
            self.base.preprocess_cfg,
            arch=self.base.arch,
            metadata=metadata,
            state=state,
            head=None if self.head is None else self.head.effective_weight(),
        )

    def _bad_step(self, step: int, what: str, loss: float) -> None:
        """A step whose loss or gradient was not finite was skipped: stop unless ``--max-bad-steps`` allows it.

        Raises:
            TrainingDiverged: more than ``--max-bad-steps`` such steps; names the step.
        """
        allowed = self.cfg.max_bad_steps
        if self.bad_steps <= allowed:
            logger.warning(
                "step %d: non-finite %s (loss %s); the step was skipped (%d of --max-bad-steps %d)",
                step,
                what,
                loss,
                self.bad_steps,
                allowed,
            )
            return
        detail = f"the loss is {loss}" if what == "loss" else f"a gradient is not finite (loss {loss})"
        skipped = f" after {self.bad_steps - 1} skipped step(s)" if allowed else ""
        raise TrainingDiverged(
            f"training diverged at step {step}: {detail}{skipped}; stopped. {self._last_good()}",
            self._diverged_hint(),
            param=("lr", "out"),
        )

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "No checkpoint was written"
        return f"checkpoints/last (step {self.last_saved}) is the last good state"

    def _diverged_hint(self) -> str:
        resume = f"starft finetune --out {self.run_dir.root} --resume --max-bad-steps N"
        if self.last_saved is None:  # nothing to continue from: a resume starts this run again at step 0
            return (
                f"Lower `lr` (now {self.cfg.lr:g}) in a new run (another `out`), or restart this one from step 0 "
                f"skipping such steps with `{resume}`"
            )
        return f"Lower `lr` (now {self.cfg.lr:g}) in a new run, or skip such steps with `{resume}`"

    def _make_head(self, student: Any, tokenizer: Any, dataset: Any, templates: list[str]) -> Any:
        """The zero-shot head: ``exp(logit_scale) x`` the class text features (C, d) as a trained linear layer, or
        (a method with ``fixed_head_scale``) the unit-norm class features trained, times the zero-shot model's fixed
        ``exp(logit_scale)`` (:mod:`starft_cli.train.heads`)."""

        from starft_cli.train.heads import make_head
        from starft_cli.zeroshot import zero_shot_head

        fixed = self.method.fixed_head_scale
        weights = zero_shot_head(student, tokenizer, dataset.classnames, templates, device=self.device, scale=not fixed)
        scale = float(student.logit_scale.exp().item()) if fixed else None
        return make_head(weights, scale).to(self.device)

    def _validate(self) -> dict[str, float]:
        from starft_cli.train.validate import validation_metrics

        clip = self.towers.clip
        clip.eval()
        try:
            return validation_metrics(
                clip,
                self.base.tokenizer,
                self.base.preprocess,
                self.p.val_dataset,
                templates=self.cfg.val_templates,
                device=self.device,
                batch_size=max(1, self.cfg.batch_size // max(1, self.env.world_size)),
                workers=self.cfg.workers,
                head=self.head,
                env=self.env,
            )
        finally:
            self._train_mode()


def _overrides(method: Any, hook: str) -> bool:
    from starft_cli.train.step import _overrides as overrides

    return overrides(method, hook)


def _templates(seed: int, step: int, micro: int, global_batch: int, pool_size: int, env: Any) -> Any:
    from starft_cli.train.step import template_indices

    return template_indices(seed, step, micro, global_batch, pool_size, env)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
