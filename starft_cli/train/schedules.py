"""Learning-rate and regulariser-weight schedules: pure functions of the step / epoch, and the warnings a
schedule that defeats its purpose deserves."""

from __future__ import annotations

import math

LAMBDA_SCHEDULES = ("linear", "linear-step", "constant")
LAST_BATCH = ("drop", "keep")


def steps_per_epoch(n: int, world_size: int, micro: int, grad_accum: int, last_batch: str = "drop") -> int:
    """Optimizer steps in an epoch of ``n`` samples, each process taking ``ceil(n / world_size)`` of them (torch's
    DistributedSampler pads the last share) in micro-batches of ``micro``, ``grad_accum`` per step.

    ``drop``: whole steps only, ``ceil(n / world_size) // (micro * grad_accum)`` (the leftover samples of an epoch
    are not seen that epoch; the next epoch's permutation differs). ``keep``: the last, partial step too,
    ``ceil(ceil(n / world_size) / (micro * grad_accum))``, which is ``ceil(n / batch)`` whenever the processes
    divide the batch: ImageNet-1k's 1,281,167 images at batch 512 give 2,503 steps (2,502 with ``drop``), as the
    StarFT, FLYP and WiSE-FT reference code (``drop_last=False``) runs. The last step then holds the remaining
    ``n - (steps - 1) * batch`` samples (143 for ImageNet), in one process exactly those; under ``world_size``
    processes each share is padded to the same length, so up to ``world_size - 1`` of the epoch's first samples
    are seen a second time in it.

    Raises:
        ValueError: an unknown ``last_batch`` or a size below 1.
    """
    if last_batch not in LAST_BATCH:
        raise ValueError(f"unknown last-batch rule {last_batch!r}")
    if min(world_size, micro, grad_accum) < 1 or n < 0:
        raise ValueError("world_size, micro and grad_accum must be >= 1 and n >= 0")
    share = -(-n // world_size)
    per_step = micro * grad_accum
    return share // per_step if last_batch == "drop" else -(-share // per_step)


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps (``base_lr * (step + 1) / warmup``), then cosine to ``min_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total_steps - warmup
    if span <= 0:
        return base_lr
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def reg_lambda(
    epoch: int, epochs: int, base: float, schedule: str = "linear", step: int = 0, total_steps: int = 1
) -> float:
    """The regulariser weight of 0-based ``epoch`` / ``step`` of a run of ``epochs`` / ``total_steps``.

    ``linear`` (the paper's, per epoch): ``base * (1 - (epoch + 1) / epochs)``, so the last epoch has weight 0
    (and a one-epoch run has 0 throughout); ``linear-step``: ``base * (1 - step / total_steps)``, from ``base``
    at step 0 down to ``base / total_steps`` at the last step; ``constant``: ``base``.

    Raises:
        ValueError: an unknown schedule.
    """
    if schedule == "constant":
        return base
    if schedule == "linear-step":
        return base * (1.0 - step / max(total_steps, 1))
    if schedule != "linear":
        raise ValueError(f"unknown lambda schedule {schedule!r}")
    return base * (1.0 - (epoch + 1) / epochs)


def zero_lambda_steps(schedule: str, base: float, epochs: int, steps_per_epoch: int, total_steps: int) -> int:
    """How many of the run's ``total_steps`` steps (``steps_per_epoch`` per epoch) have regulariser weight 0."""
    return sum(
        reg_lambda(s // steps_per_epoch, epochs, base, schedule, s, total_steps) == 0.0 for s in range(total_steps)
    )


def schedule_warnings(
    *,
    reg: str,
    schedule: str,
    base_lambda: float,
    epochs: int,
    steps_per_epoch: int,
    total_steps: int,
    warmup: int,
    lr: float,
) -> list[str]:
    """Warnings about schedules that undo what the run asks for (each one line):

    * the regulariser weight is 0 for at least half of the steps (the run is then mostly FLYP), e.g. the
      per-epoch linear decay with ``--epochs 1`` (0 throughout) or 2 (0 for the second half);
    * the warm-up is at least as long as the run, so the learning rate never decays (or never reaches ``lr``).
    """
    out = []
    if reg != "none" and base_lambda > 0 and total_steps > 0:
        zero = zero_lambda_steps(schedule, base_lambda, epochs, steps_per_epoch, total_steps)
        if 2 * zero >= total_steps:
            why = (
                f" (per-epoch decay lambda * (1 - (e + 1) / E) with --epochs {epochs})" if schedule == "linear" else ""
            )
            out.append(
                f"--lambda-schedule {schedule} leaves the regulariser weight at 0 for {zero} of the run's "
                f"{total_steps} steps{why}: that part of the run trains without the regulariser. Use --lambda-schedule "
                "linear-step (per-step decay) or constant"
            )
    if warmup > 0 and warmup >= total_steps > 0:
        peak = cosine_lr(total_steps - 1, lr, warmup, total_steps)
        if warmup > total_steps:
            out.append(
                f"warm-up of {warmup} steps is longer than the run's {total_steps} steps: the learning rate never "
                f"reaches --lr {lr:g} (it peaks at {peak:.3g}). Lower --warmup"
            )
        else:
            out.append(
                f"warm-up of {warmup} steps lasts the whole {total_steps}-step run: the learning rate reaches --lr "
                f"{lr:g} only at the last step and never decays. Lower --warmup"
            )
    return out
