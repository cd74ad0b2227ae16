"""``starft demo``: the whole job on the embedded spurious-digits benchmark (no GPU, no download)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.cli.options import DeviceOpt
from starft_cli.demo import METHODS as DEMO_METHODS  # no torch: the list only

HELP = (
    "Run the whole job on the embedded spurious-digits benchmark: build a tiny zero-shot CLIP, fine-tune it with "
    "each method on background-biased data, and compare them on a balanced test set (minutes on a laptop CPU)."
)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and the report.")] = Path("starft-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fine-tuning runs (data order, crops).")] = 0,
    methods: Annotated[
        str,
        typer.Option("--methods", help=f"Comma list of {', '.join(DEMO_METHODS)}, or all (every one of them)."),
    ] = "ft,flyp,starft",
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Generate the data and pre-train the zero-shot model again.")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="A few steps per stage: checks the pipeline; the numbers mean nothing.")
    ] = False,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write demo.png (needs matplotlib).")] = True,
    device: DeviceOpt = "auto",
) -> None:
    """Run the whole job on the embedded spurious-digits benchmark and print the leaderboard."""
    from starft_cli.demo import DemoConfig, parse_methods, run_demo
    from starft_cli.reports.tables import render

    config = DemoConfig(
        out=out, seed=seed, methods=parse_methods(methods), rebuild=rebuild, device=device, quick=quick, plot=plot
    )
    started = time.monotonic()
    try:
        with _DemoProgress() as progress:
            result = run_demo(config, progress=progress)
    except KeyboardInterrupt:
        import shlex

        again = f"starft demo --out {shlex.quote(str(out))} --seed {seed} --methods {','.join(config.methods)}"
        again += " --quick" * quick + " --no-plot" * (not plot) + (f" --device {device}" if device != "auto" else "")
        typer.echo(f"interrupted: finished stages are kept; run `{again}` again to pick up where it stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"wrote {', '.join(str(p) for p in result.paths)} in {time.monotonic() - started:.0f} s", err=True)
    typer.echo(render(result.frame, "table", "zero-shot", None, _description(), notes=result.notes), nl=False)


def _description() -> str:
    from starft_cli.demo import suite

    return suite().description


class _DemoProgress:
    """Stage lines, the training progress of each run, and evaluation bars (on a terminal) on stderr."""

    def __enter__(self) -> _DemoProgress:
        from starft_cli.cli.finetune import _Progress

        self.training: Any = None
        self.progress_cls = _Progress
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_training(*exc)

    def _end_training(self, *exc: object) -> None:
        if self.training is not None:
            self.training.__exit__(*(exc or (None, None, None)))
            self.training = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "stage":
            self._end_training()
            where = f" ({event['path']})" if event.get("path") else ""
            typer.echo(f"[demo] {event['stage']}: {event['status']}{where}", err=True)
        elif kind == "finished":
            typer.echo(f"[demo] {event['run_dir']}: finished earlier ({event['step']} steps), reused", err=True)
        elif kind == "eval":
            if event["done"] == event["total"] and not sys.stderr.isatty():
                typer.echo(f"[demo] evaluated {event['name']}: {event['total']} images", err=True)
        else:
            if kind == "start":
                self._end_training()
                self.training = self.progress_cls().__enter__()
            if self.training is not None:
                self.training(event)
            if kind == "done":
                self._end_training()


COMMANDS = [Command("demo", demo_command, HELP)]
