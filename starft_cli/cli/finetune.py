"""``starft finetune`` (StarFT, FLYP, KL ablation, CE baseline) and ``starft wise`` (WiSE-FT interpolation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import ArchOpt, DeviceOpt
from starft_cli.cli.progress import progress_bar
from starft_cli.errors import UsageError
from starft_cli.runs import BEST, LAST, RunLayout

HELP = "Fine-tune a CLIP model with StarFT or any robust fine-tuning method it is compared with (--method)."
WISE_HELP = "WiSE-FT: interpolate a zero-shot and a fine-tuned model's weights for one or more alphas."

_P = "Training"


def finetune_command(
    backbone: Annotated[
        str | None,
        typer.Option("--backbone", help="Model to fine-tune (any model reference; default ViT-B-16)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Training data: a dataset name, folder:PATH or csv:PATH (default imagenet)."),
    ] = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Folder holding the named datasets.")] = None,
    classnames: Annotated[
        str | None, typer.Option("--classnames", help="Class-names file (one per line) for folder:/csv: data.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="Fine-tuning method: starft (default), flyp, ft, kl, lp, lp-ft, l2-sp, lipsum-ft, car-ft, carot, ... "
            "(--help-method lists them all; with --method NAME it describes NAME).",
        ),
    ] = None,
    hp: Annotated[
        list[str] | None,
        typer.Option("--hp", help="A hyper-parameter of the method, NAME=VALUE (repeatable; see --help-method)."),
    ] = None,
    help_method: Annotated[
        bool, typer.Option("--help-method", help="Describe --method (source, loss, hyper-parameters) and exit.")
    ] = False,
    download: Annotated[
        bool,
        typer.Option("--download", help="Fetch the Hub copy of --data / --val-data first when not under --data-root."),
    ] = False,
    reg: Annotated[
        str | None, typer.Option("--reg", help="Deprecated (removed in 0.5): use --method starft, kl or flyp.")
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Spurious pool: background, texture, resolution, a pool imported with `starft pool import` "
            "(`starft pool list`) or a file.",
        ),
    ] = None,
    reg_lambda: Annotated[
        float | None, typer.Option("--lambda", help="Regulariser weight (default: the method's, 0.5 for starft).")
    ] = None,
    lambda_schedule: Annotated[
        str | None,
        typer.Option(
            "--lambda-schedule",
            help="linear (StarFT's: per-epoch decay, 0 in the last epoch), linear-step (per-step decay) or "
            "constant (default: the method's, e.g. linear for starft, constant for carot, lipsum-ft, car-ft).",
        ),
    ] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Deprecated (removed in 0.5): use --method ft.")] = None,
    freeze_text: Annotated[
        bool | None, typer.Option("--freeze-text/--train-text", help="Freeze the text tower.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (default 10).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default 1e-5).")] = None,
    wd: Annotated[float | None, typer.Option("--wd", help="AdamW weight decay (default 0.1).")] = None,
    wd_scope: Annotated[
        str | None,
        typer.Option(
            "--wd-scope",
            help="Which parameters --wd decays: open-clip (default: not gains, biases, norms, logit_scale) or all "
            "(as the StarFT/FLYP/WiSE-FT reference code does; the paper recipes).",
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size (default 512).")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Linear warm-up steps (default 500).")] = None,
    last_batch: Annotated[
        str | None,
        typer.Option(
            "--last-batch",
            help="An epoch's last partial batch: drop (default) or keep (the reference code's: 2,503 steps per "
            "ImageNet epoch at batch 512; needs --grad-accum 1).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default 0).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Data-loading processes (default: 4, at most the core count).")
    ] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, bf16 or fp16.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per step.")] = None,
    grad_checkpointing: Annotated[
        bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Trade compute for memory.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Save checkpoints/last every N steps (0: epoch ends).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="Run directory (default runs/METHOD-TIME).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML file of settings (flags win), or paper:NAME for a shipped paper recipe (README)."
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the fully resolved configuration as JSON and exit (no training)."),
    ] = False,
    val_data: Annotated[
        str | None,
        typer.Option(
            "--val-data",
            help="ID validation data; selects checkpoints/best. holdout:FRACTION holds out that seeded, "
            "class-stratified part of the training data (never trained on).",
        ),
    ] = None,
    val_split: Annotated[str | None, typer.Option("--val-split", help="Split of --val-data (e.g. val).")] = None,
    val_templates: Annotated[
        str | None, typer.Option("--val-templates", help="Template set for the validation head (default: the data's).")
    ] = None,
    select_by: Annotated[
        str | None,
        typer.Option(
            "--select-by",
            help="What checkpoints/best maximises: top1, worst_group_acc or mean_group_acc (the last two need "
            "--val-data with groups). Default top1.",
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps.")] = None,
    max_bad_steps: Annotated[
        int | None,
        typer.Option(
            "--max-bad-steps",
            help="Skip up to N steps whose loss or gradient is NaN/inf (default 0: stop at the first).",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None, typer.Option("--tensorboard/--no-tensorboard", help="Also log to RUN/tensorboard.")
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict/--no-strict",
            help="Stop at the first unreadable training image (default: warn once per file and train on the next "
            "readable image in its place; the summary counts them).",
        ),
    ] = None,
    arch: ArchOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune a CLIP model with StarFT or any robust fine-tuning method it is compared with (--method)."""
    from starft_cli.train.config import config_for_run, parse_hp

    if help_method:
        typer.echo(method_card(method))
        return
    if download:
        from starft_cli.cli.data import _announce
        from starft_cli.data.sources.hub import fetch_missing

        wanted = [(data or "imagenet", "train")] + ([(val_data, val_split)] if val_data else [])
        for line in fetch_missing(wanted, data_root, announce=_announce):
            typer.echo(f"not downloaded: {line}", err=True)
    overrides: dict[str, Any] = {
        "method": method,
        "hparams": parse_hp(hp),
        "backbone": backbone,
        "data": data,
        "data_root": data_root,
        "classnames": classnames,
        "reg": reg,
        "pool": pool,
        "reg_lambda": reg_lambda,
        "lambda_schedule": lambda_schedule,
        "loss": loss,
        "freeze_text": freeze_text,
        "epochs": epochs,
        "lr": lr,
        "wd": wd,
        "wd_scope": wd_scope,
        "last_batch": last_batch,
        "batch_size": batch_size,
        "warmup": warmup,
        "seed": seed,
        "workers": workers,
        "precision": precision,
        "grad_accum": grad_accum,
        "grad_checkpointing": grad_checkpointing,
        "checkpoint_every": checkpoint_every,
        "out": out,
        "val_data": val_data,
        "val_split": val_split,
        "val_templates": val_templates,
        "max_steps": max_steps,
        "max_bad_steps": max_bad_steps,
        "select_by": select_by,
        "tensorboard": tensorboard,
        "strict": strict,
        "arch": arch,
        "device": device if device != "auto" else None,
    }
    _setup_logging()
    cfg = config_for_run(overrides, config, resume=resume)
    if print_config:
        typer.echo(cfg.to_json(), nl=False)
        return
    from starft_cli.train import finetune

    with _Progress() as bar:
        try:
            run_dir = finetune(cfg, progress=bar)
        except KeyboardInterrupt:
            bar.close()
            if bar.rank == 0:
                typer.echo(bar.interrupted_message(cfg.out), err=True)
            raise typer.Exit(130) from None
    if bar.rank == 0:
        typer.echo(str(run_dir))


def method_card(name: str | None) -> str:
    """``--help-method``: every method in one line each, or one method's card (source, loss, hyper-parameters)."""
    from starft_cli.train.methods import available, get_method

    if name is None:
        width = max(len(n) for n in available())
        lines = [f"{n:<{width}}  {cls.title}" for n, cls in available().items()]
        return "\n".join([*lines, "", "starft finetune --method NAME --help-method describes one of them."])
    cls = get_method(name)
    lines = [f"{cls.name}: {cls.title}", f"source: {cls.source}", f"loss: {cls.loss_doc}"]
    lines.append(f"objective: {cls.objective}{' (needs the frozen zero-shot model)' if cls.needs_teacher else ''}")
    if cls.regularized:
        lines.append(
            f"--lambda: regulariser weight, default {cls.default_lambda:g} (--lambda-schedule, default "
            f"{cls.default_lambda_schedule})"
        )
    if cls.needs_pool:
        lines.append("--pool: the spurious-description pool, default background")
    for p in cls.hparams:
        default = p.default if isinstance(p.default, str) else f"{p.default:g}"
        lines.append(f"--hp {p.name}=VALUE: {p.help} (default {default})")
    if cls.__doc__:
        import inspect
        import re

        text = re.sub(r":(?:meth|func|class|mod|data):`~?([^`]+)`", r"\1", inspect.cleandoc(cls.__doc__))
        lines += ["", text.replace("``", "")]
    return "\n".join(lines)


def _setup_logging() -> None:
    """Progress and info lines from the training core on stderr (rank 0 only; the app's handler prints them)."""
    import os

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.getLogger("starft_cli").setLevel(level)


class _Progress:
    """A rich progress bar on a terminal (rank 0 only); plain log lines on stderr otherwise."""

    def __init__(self) -> None:
        import os

        self.rank = int(os.environ.get("RANK", "0"))
        self.bar: Any = None
        self.task: Any = None
        self.last_line = 0.0
        self.run_dir: str | None = None
        self.step = 0  # the last step done
        self.saved: int | None = None  # the step of the newest checkpoints/last

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def interrupted_message(self, out: str | None) -> str:
        """What Ctrl-C prints: where the run stopped, what a resume continues from, the exact command."""
        run = self.run_dir or out
        if run is None:
            return "interrupted before training started"
        import shlex

        command = f"starft finetune --out {shlex.quote(run)} --resume"
        if self.saved is None:
            kept = "no checkpoint was written yet, so a resume starts again at step 0"
        else:
            kept = f"the last checkpoint is step {self.saved} ({RunLayout(run).checkpoint(LAST)})"
        return f"interrupted at step {self.step}; {kept}. Resume with: {command}"

    def __enter__(self) -> _Progress:
        self.bar = progress_bar(stats=True, transient=False, quiet=self.rank != 0)
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        import time

        if self.rank != 0:
            return
        kind = event.get("kind")
        if "run_dir" in event:
            self.run_dir = event["run_dir"]
        if kind == "start":
            self.step = event["step"]
            self.saved = event["step"] or None  # a resumed run starts from its last checkpoint
            if self.bar is not None:
                self.task = self.bar.add_task("training", total=event["total_steps"], completed=event["step"], stats="")
            else:
                typer.echo(f"training {event['run_dir']}: {event['total_steps']} steps", err=True)
        elif kind == "checkpoint":
            if event["name"] == LAST:
                self.saved = event["step"]
        elif kind == "finished":
            typer.echo(
                f"{event['run_dir']} is already finished ({event['step']} of {event['total_steps']} steps); "
                "nothing to do",
                err=True,
            )
        elif kind == "done":
            self.close()
            typer.echo(_summary(event), err=True)
        elif kind == "step":
            self.step = event["step"]
            reg = "-" if event["reg"] is None else f"{event['reg']:.4f}"
            stats = f"loss {event['loss']:.4f} reg {reg} lr {event['lr']:.2e} {event['images_per_s']:.1f} img/s"
            if event.get("skipped"):
                stats += f" (skipped: {event['skipped']})"
            if self.bar is not None:
                self.bar.update(self.task, completed=event["step"], stats=stats)
            else:
                now = time.monotonic()
                if now - self.last_line >= 10 or event["step"] == event["total_steps"] or event["step"] == 1:
                    self.last_line = now
                    typer.echo(f"step {event['step']}/{event['total_steps']} epoch {event['epoch']} {stats}", err=True)
        elif kind == "validation":
            line = f"epoch {event['epoch']}: validation accuracy {event['accuracy']:.4f}"
            if event.get("select_by", "top1") != "top1":
                line += f", {event['select_by']} {event['value']:.4f}"
            typer.echo(line, err=True)


def _summary(event: dict[str, Any]) -> str:
    """The closing line of a run: steps, wall time, best validation accuracy, where the checkpoints are."""
    seconds = float(event.get("seconds", 0.0))
    took = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    parts = [f"finished {event['step']} of {event['total_steps']} steps in {took}"]
    if event.get("bad_steps"):
        parts.append(f"{event['bad_steps']} non-finite step(s) skipped")
    if event.get("unreadable"):
        parts.append(f"{event['unreadable']} unreadable image(s) replaced by the next readable one")
    layout = RunLayout(event["run_dir"])
    checkpoints = layout.checkpoints
    if event.get("best") is not None:
        by = event.get("select_by", "top1")
        what = "accuracy" if by == "top1" else by
        parts.append(f"best validation {what} {event['best']:.4f} ({layout.checkpoint(BEST)})")
    parts.append(f"checkpoints in {checkpoints}")
    return "; ".join(parts)


def wise_command(
    zero_shot: Annotated[str, typer.Option("--zero-shot", help="The zero-shot (pre-fine-tuning) model.")],
    fine_tuned: Annotated[str, typer.Option("--fine-tuned", help="The fine-tuned model (e.g. RUN/checkpoints/best).")],
    alpha: Annotated[
        str, typer.Option("--alpha", help="Weight of the fine-tuned model: one value or a comma list (0..1).")
    ] = "0.5",
    out: Annotated[Path, typer.Option("--out", help="Output folder: one model folder per alpha.")] = Path("wise"),
    arch: ArchOpt = None,
) -> None:
    """WiSE-FT: interpolate a zero-shot and a fine-tuned model's weights for one or more alphas."""
    alphas = parse_alphas(alpha)
    from starft_cli.wise import write_wise

    for path in write_wise(zero_shot, fine_tuned, alphas, out, arch=arch):
        typer.echo(str(path))


SOUP_HELP = "Model soups (uniform, greedy) and Model Stock: combine finished fine-tuning runs into one model."


def soup_command(
    run: Annotated[list[str], typer.Option("--run", metavar="REF", help="A fine-tuned model (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="Output model folder.")],
    method: Annotated[str, typer.Option("--method", help="uniform, greedy or model-stock.")] = "uniform",
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="model-stock: the model the runs were fine-tuned from.")
    ] = None,
    val_data: Annotated[
        str | None, typer.Option("--val-data", help="greedy: held-out ID validation data (name, folder:, csv:).")
    ] = None,
    val_split: Annotated[str | None, typer.Option("--val-split", help="greedy: split of --val-data.")] = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Folder holding the named datasets.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Model soups (uniform, greedy) and Model Stock: combine finished fine-tuning runs into one model."""
    import json

    from starft_cli.device import resolve_device
    from starft_cli.train.holdout import selection_warnings
    from starft_cli.wise import write_soup

    if method == "greedy":  # the soup is chosen on --val-data: warn when that split is also a reported one
        instead = "Choose on images held out of the runs' training data (folder: or csv:), never on a reported split"
        for line in selection_warnings(val_data, val_split, None, None, what="the greedy soup", instead=instead):
            typer.echo(f"warning: {line}", err=True)

    folder, info = write_soup(
        method,
        run,
        out,
        pretrained=pretrained,
        val_data=val_data,
        val_split=val_split,
        data_root=data_root,
        device=str(resolve_device(device)),
    )
    typer.echo(json.dumps(info, sort_keys=True), err=True)
    typer.echo(str(folder))


def parse_alphas(text: str) -> list[float]:
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--alpha '{part}' is not a number", "e.g. --alpha 0,0.5,1") from None
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--alpha {value} is outside 0..1", "0 is the zero-shot model, 1 the fine-tuned one")
        values.append(value)
    if len(set(values)) != len(values):
        raise UsageError("--alpha lists a value twice")
    return values


COMMANDS = [
    Command("finetune", finetune_command, HELP),
    Command("wise", wise_command, WISE_HELP),
    Command("soup", soup_command, SOUP_HELP),
]
