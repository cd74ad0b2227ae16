"""``finetune(config) -> run_dir``: StarFT / FLYP / KL / CE fine-tuning, single- or multi-process."""

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
from starft_cli.train.config import RESUME_MUTABLE, TrainConfig, config_from_json

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
METHOD_NAMES = {"star": "starft", "kl": "kl", "none": "flyp"}


def method_name(config: TrainConfig) -> str:
    return "ce" if config.loss == "ce" else METHOD_NAMES[config.reg]


def default_out(config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{method_name(config)}-{stamp}")


@dataclass
class Prepared:
    """What is checked and loaded before any model: data, pools, run directory."""

    config: TrainConfig
    run: RunDir
    dataset: Any
    val_dataset: Any | None
    pool: list[str]
    resume_from: Path | None


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
            stored = config_from_json(run.config.read_text(encoding="utf-8"), str(run.config))
            diff = sorted(k for k, v in config.to_dict().items() if k not in RESUME_MUTABLE and getattr(stored, k) != v)
            if diff:
                raise ConfigError(
                    f"--resume: settings differ from the run's config.json: {', '.join(diff)}",
                    "Resume with the run's own settings",
                )
            resume_from = run.find_checkpoint("last")
        elif run.root.exists() and any(p.name != LOCK_NAME for p in run.root.iterdir()):
            raise CheckpointError(f"{run.root} is not a starft run (no config.json)", "Check --out")
    elif run.config.is_file():
        raise CheckpointError(
            f"{run.root} already holds a run", "Pass --resume to continue it, or choose another --out"
        )
    dataset = load_dataset(config.data, config.data_root, config.split, classnames_file=config.classnames)
    if len(dataset.classnames) < 2 and config.reg == "star":
        raise DataError("StarReg needs at least two classes", "Use --reg none or add classes")
    pool = load_pool(config.pool) if config.reg != "none" else []
    val = None
    if config.val_data:
        val = load_dataset(config.val_data, config.val_data_root or config.data_root, config.val_split)
        from starft_cli.train.validate import GROUP_CRITERIA

        if config.select_by in GROUP_CRITERIA and val.groups is None:
            raise DataError(
                f"--select-by {config.select_by} needs a validation set with groups, and {config.val_data} has none",
                "Use --select-by top1, or validate on data with groups (e.g. waterbirds)",
            )
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package", "pip install 'starft[tensorboard]', or drop the flag"
            ) from None
    from starft_cli.models import parse_model_ref

    parse_model_ref(config.backbone, arch=config.arch)  # a bad reference fails here, before any loading
    return Prepared(config, run, dataset, val, pool, resume_from)


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


class _Trainer:
    def __init__(self, prepared: Prepared, env: Any, device: Any, progress: ProgressFn | None) -> None:
        self.p = prepared
        self.cfg = prepared.config
        self.env = env
        self.device = device
        self.progress = progress or (lambda event: None)
        self.run_dir = prepared.run
        self.bad_steps = 0  # steps skipped for a non-finite loss or gradient (--max-bad-steps)
        self.last_saved: int | None = None  # step of the newest checkpoints/last

    # -------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        import torch

        from starft_cli import models
        from starft_cli.data.pipeline import TrainSamples, batch_normalizer, train_transform
        from starft_cli.device import cuda_call_args
        from starft_cli.train.sampling import ResumableSampler

        cfg, env, device = self.cfg, self.env, self.device
        calls = cuda_call_args(device)
        world, accum = env.world_size, cfg.grad_accum
        if cfg.batch_size % (world * accum):
            raise ConfigError(
                f"--batch-size {cfg.batch_size} is not divisible by {world} processes x --grad-accum {accum}",
                "The global batch is split evenly over processes and micro-batches",
            )
        micro = cfg.batch_size // (world * accum)
        dataset = self.p.dataset
        per_rank = -(-len(dataset) // world)
        steps_per_epoch = per_rank // (micro * accum)
        if steps_per_epoch == 0:
            raise DataError(
                f"{cfg.data} has {len(dataset)} images, fewer than one batch of {cfg.batch_size}",
                "Lower --batch-size",
            )
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)

        resume_state = None
        if self.p.resume_from is not None:
            resume_state = load_training_state(self.p.resume_from)
            if resume_state["step"] >= total_steps:  # nothing left to do: say so, touch nothing
                self.progress(
                    {
                        "kind": "finished",
                        "step": resume_state["step"],
                        "total_steps": total_steps,
                        "run_dir": str(self.run_dir.root),
                        "best": resume_state.get("best"),
                        "select_by": cfg.select_by,
                    }
                )
                return self.run_dir.root
        started_run = time.perf_counter()
        torch.manual_seed(cfg.seed)
        base = models.load(cfg.backbone, device=device, arch=cfg.arch, seed=cfg.seed)
        student = base.model
        teacher = None
        if cfg.reg != "none":
            teacher = copy.deepcopy(student).eval()
            for param in teacher.parameters():
                param.requires_grad_(False)
        self.base = base
        if self.p.resume_from is not None:
            weights = models.read_state_dict(self.p.resume_from / models.WEIGHTS_NAME)
            student.load_state_dict(weights, strict=True)
        if env.is_main and not self.run_dir.config.is_file():
            self.run_dir.write_config(cfg.to_json())

        if cfg.freeze_text or cfg.loss == "ce":
            for name, param in student.named_parameters():
                if not (name.startswith("visual.") or name.startswith("logit_")):
                    param.requires_grad_(False)
        if cfg.grad_checkpointing:
            student.set_grad_checkpointing(True)
        student.train()

        head = None
        if cfg.loss == "ce":
            head = self._make_head(student, base.tokenizer, dataset)
            if resume_state is not None and "head" in resume_state:
                head.weight.data.copy_(resume_state["head"])

        captions = dataset.captions
        class_caps = captions is None
        from starft_cli.train.bank import class_captions

        default_captions = class_captions(dataset.classnames, cfg.caption_template)
        bank = None
        if (
            cfg.loss == "contrastive"
            and cfg.step_impl == "efficient"
            and ((cfg.reg != "none" and class_caps) or (cfg.freeze_text and class_caps))
        ):
            bank = self._bank(teacher if teacher is not None else student, base.tokenizer, dataset)

        from starft_cli.train.step import StarStep, Towers

        towers: Any = Towers(student, head, trim=cfg.step_impl == "efficient").to(device)
        params = [(n, p) for n, p in towers.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if not _no_decay(n, p)]
        no_decay = [p for n, p in params if _no_decay(n, p)]
        optimizer = torch.optim.AdamW(
            [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.wd}],
            lr=cfg.lr,
            fused=calls.fused_adamw,
        )
        scaler = torch.amp.GradScaler(calls.scaler_device, enabled=cfg.precision == "fp16")
        wrapped = towers
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(towers, **calls.ddp)
        autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        teacher_scale = float(teacher.logit_scale.exp().item()) if teacher is not None else 0.0
        step_fn = StarStep(
            towers=wrapped,
            clip=student,
            teacher=teacher,
            tokenizer=base.tokenizer,
            pool=self.p.pool or ["{}"],
            teacher_scale=teacher_scale,
            reg=cfg.reg,
            freeze_text=cfg.freeze_text,
            impl=cfg.step_impl,
            bank=bank,
            env=env,
            autocast_dtype=autocast_dtype,
        )

        step, epoch, in_epoch, best = 0, 0, 0, None
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
            if "scaler" in resume_state and cfg.precision == "fp16":
                scaler.load_state_dict(resume_state["scaler"])
            step, epoch, in_epoch = resume_state["step"], resume_state["epoch"], resume_state["step_in_epoch"]
            best = resume_state.get("best")
            self.bad_steps = int(resume_state.get("bad_steps", 0))
            self.last_saved = step
            if resume_state.get("world_size", 1) != world and in_epoch:
                logger.warning(
                    "resuming with %d processes a run saved with %d: the rest of epoch %d is drawn for the new "
                    "process count, so it is not bitwise the run an unchanged setup would give",
                    world,
                    resume_state.get("world_size", 1),
                    epoch,
                )
            torch.set_rng_state(resume_state["rng_cpu"])
            logger.info("resuming %s at step %d (epoch %d, step %d of it)", self.run_dir.root, step, epoch, in_epoch)

        if cfg.resume and env.is_main:
            self.run_dir.truncate_metrics(step)  # steps after the checkpoint are redone (all of them if none)
        # Workers hand over uint8 crops; scaling and normalisation run on the batch, on the device.
        samples = TrainSamples(dataset, train_transform(base.preprocess_cfg, normalize=False), seed=cfg.seed)
        normalize = batch_normalizer(base.preprocess_cfg)
        sampler = ResumableSampler(len(dataset), world, env.rank, cfg.seed)
        self.progress({"kind": "start", "total_steps": total_steps, "step": step, "run_dir": str(self.run_dir.root)})
        tb = None
        if cfg.tensorboard and env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir.root / "tensorboard"))
        self.towers, self.optimizer, self.scaler, self.head = towers, optimizer, scaler, head
        self.wrapped, self.step_fn, self.normalize, self.autocast_dtype = wrapped, step_fn, normalize, autocast_dtype
        self.captions, self.default_captions, self.class_caps, self.micro = (
            captions,
            default_captions,
            class_caps,
            micro,
        )

        from starft_cli.train.schedules import cosine_lr, reg_lambda, schedule_warnings

        if env.is_main:
            for warning in schedule_warnings(
                reg=cfg.reg if cfg.loss == "contrastive" else "none",
                schedule=cfg.lambda_schedule,
                base_lambda=cfg.reg_lambda,
                epochs=cfg.epochs,
                steps_per_epoch=steps_per_epoch,
                total_steps=total_steps,
                warmup=cfg.warmup,
                lr=cfg.lr,
            ):
                logger.warning("%s", warning)
            used = steps_per_epoch * cfg.batch_size
            if len(dataset) - used >= 0.1 * len(dataset):
                logger.warning(
                    "each epoch trains on %d of the %d images (whole batches of %d only; the %d left over are drawn "
                    "anew each epoch): lower --batch-size to use more of them",
                    used,
                    len(dataset),
                    cfg.batch_size,
                    len(dataset) - used,
                )
        while epoch < cfg.epochs and step < total_steps:
            samples.epoch = epoch
            sampler.set_position(epoch, in_epoch * accum * micro)
            loader = torch.utils.data.DataLoader(
                samples,
                batch_size=micro,
                sampler=sampler,
                num_workers=cfg.workers,
                drop_last=True,
                pin_memory=calls.pin_memory,
                persistent_workers=False,
            )
            batches = iter(loader)
            while in_epoch < steps_per_epoch and step < total_steps:
                started = time.perf_counter()
                lr = cosine_lr(step, cfg.lr, cfg.warmup, total_steps)
                lam = 0.0
                if cfg.reg != "none":
                    lam = reg_lambda(epoch, cfg.epochs, cfg.reg_lambda, cfg.lambda_schedule, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                sums, bad = self._optimizer_step(batches, step, lam)
                step += 1
                in_epoch += 1
                from starft_cli.train.distributed import mean_over_ranks

                loss, con, reg = mean_over_ranks(sums, env)
                elapsed = time.perf_counter() - started
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "contrastive": con,
                    "reg": None if math.isnan(reg) and bad is None else reg,  # None: skipped, its weight is 0
                    "lambda": lam,
                    "lr": lr,
                    "images_per_s": cfg.batch_size / max(elapsed, 1e-9),
                }
                if bad is not None:
                    self.bad_steps += 1
                    record.update(skipped=f"non-finite {bad}", bad_steps=self.bad_steps)
                if env.is_main and (step % cfg.log_every == 0 or step == total_steps or bad is not None):
                    self.run_dir.append_metrics(record)  # non-finite values are written as null
                    if tb is not None:
                        for key in ("loss", "contrastive", "reg", "lambda", "lr", "images_per_s"):
                            if record[key] is not None and math.isfinite(record[key]):
                                tb.add_scalar(f"train/{key}", record[key], step)
                if bad is not None:
                    self._bad_step(step, bad, loss)
                self.progress({"kind": "step", "total_steps": total_steps, **record})
                epoch_end = in_epoch >= steps_per_epoch
                if epoch_end:
                    epoch, in_epoch = epoch + 1, 0
                    if self.p.val_dataset is not None:
                        best = self._after_epoch(epoch - 1, step, best)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or epoch_end or step >= total_steps:
                    self._save("last", step, epoch, in_epoch, best)
                if epoch_end:
                    break
            del batches, loader
        from starft_cli.train.distributed import barrier

        if tb is not None:
            tb.close()
        barrier(env)
        self.progress(
            {
                "kind": "done",
                "step": step,
                "total_steps": total_steps,
                "run_dir": str(self.run_dir.root),
                "best": best,
                "select_by": cfg.select_by,
                "seconds": time.perf_counter() - started_run,
                "bad_steps": self.bad_steps,
            }
        )
        return self.run_dir.root

    def _optimizer_step(self, batches: Any, step: int, lam: float) -> tuple[Any, str | None]:
        """Forward and backward one step (``grad_accum`` micro-batches) and step the optimizer; return (loss,
        contrastive, reg) of the whole batch as a tensor, and why the step was skipped (non-finite "loss" or
        "gradient"; None when it was taken).

        Accumulation is exact: the cross-entropy loss is a per-sample mean (each micro-batch's share is
        back-propagated), and the batch-coupled contrastive loss and regulariser go through
        :meth:`StarStep.accumulate`; template draws are per step, sliced per micro-batch, as without it.
        """
        import torch

        from starft_cli.train.step import MicroBatch

        cfg, env, device = self.cfg, self.env, self.device
        accum = cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        micro: list[MicroBatch] = []
        tidx = None
        if cfg.loss != "ce":  # this process's rows of the global batch, in micro-batch order
            tidx = _templates(cfg.seed, step, 0, cfg.batch_size, len(self.step_fn.pool), env).to(device)
        for m in range(accum):
            images, labels, index = next(batches)
            images = self.normalize(images.to(device, non_blocking=True))
            labels = labels.to(device)
            if cfg.loss == "ce":
                last = m == accum - 1 or not env.distributed
                with self.wrapped.no_sync() if not last else _null():  # gradients are all-reduced once per step
                    out = self._ce_loss(self.wrapped, images, labels, self.autocast_dtype)
                    self.scaler.scale(out.loss / accum).backward()
                sums += torch.stack([out.loss.detach(), out.contrastive, out.reg]).to(sums.dtype) / accum
                continue
            assert tidx is not None
            caps = [
                self.captions[i] if self.captions else self.default_captions[y]
                for i, y in zip(index.tolist(), labels.tolist(), strict=True)
            ]
            micro.append(MicroBatch(images, labels, caps, tidx[m * self.micro : (m + 1) * self.micro]))
        if micro:
            if accum == 1:
                one = micro[0]
                out = self.step_fn(one.images, one.labels, one.captions, one.template_idx, lam, self.class_caps)
                self.scaler.scale(out.loss).backward()
            else:
                out = self.step_fn.accumulate(
                    micro,
                    lam,
                    self.class_caps,
                    backward=lambda loss: self.scaler.scale(loss).backward(),
                    no_sync=self.wrapped.no_sync if env.distributed else None,
                )
            sums += torch.stack([out.loss.detach(), out.contrastive, out.reg]).to(sums.dtype)
        bad = self._nonfinite(sums[0])
        if bad is None:
            self.scaler.step(self.optimizer)  # fp16: the scaler itself skips steps with inf/NaN scaled gradients
            self.scaler.update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return sums, bad

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
        metadata = {
            "method": method_name(self.cfg),
            "base_model": self.cfg.backbone,
            "step": step,
            "epoch": epoch,
            "hyperparameters": self.cfg.to_dict(),
            **(extra or {}),
        }
        if self.head is not None:
            metadata["head_classnames"] = list(self.p.dataset.classnames)
        from starft_cli.train.checkpoint import NonFiniteWeights

        try:
            self._write_checkpoint(name, metadata, state)
        except NonFiniteWeights as exc:
            raise TrainingDiverged(
                f"training diverged: the weights after step {step} are not finite ({exc}); "
                f"checkpoints/{name} was not written. {self._last_good()}",
                self._diverged_hint(),
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
            head=None if self.head is None else self.head.weight,
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
        )

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "No checkpoint was written"
        return f"checkpoints/last (step {self.last_saved}) is the last good state"

    def _diverged_hint(self) -> str:
        return (
            f"Lower --lr (now {self.cfg.lr:g}) in a new run, or skip such steps with "
            f"`starft finetune --out {self.run_dir.root} --resume --max-bad-steps N`"
        )

    def _make_head(self, student: Any, tokenizer: Any, dataset: Any) -> Any:
        import torch

        from starft_cli.prompts import load_templates
        from starft_cli.zeroshot import zero_shot_head

        templates = load_templates(self.cfg.val_templates or getattr(dataset, "templates", None) or "imagenet80")
        weights = zero_shot_head(student, tokenizer, dataset.classnames, templates, device=self.device, scale=True)
        head = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False).to(self.device)
        with torch.no_grad():
            head.weight.copy_(weights)
        return head

    def _ce_loss(self, wrapped: Any, images: Any, labels: Any, autocast_dtype: Any) -> Any:
        import contextlib

        import torch
        import torch.nn.functional as F

        from starft_cli.device import cuda_call_args
        from starft_cli.train.step import StepOutput

        device_type = cuda_call_args(self.device).autocast_device_type
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            (logits,) = wrapped(images)
        loss = F.cross_entropy(logits.float(), labels)
        return StepOutput(loss=loss, contrastive=loss.detach(), reg=loss.new_zeros(()))

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
            clip.train()


def _no_decay(name: str, param: Any) -> bool:
    return param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name or "logit_scale" in name


def _templates(seed: int, step: int, micro: int, global_batch: int, pool_size: int, env: Any) -> Any:
    from starft_cli.train.step import template_indices

    return template_indices(seed, step, micro, global_batch, pool_size, env)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
