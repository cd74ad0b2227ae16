"""Options shared by several commands (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model reference: ARCH[:TAG|:none], a weights file or folder, hf-hub:ORG/NAME[@REV], or a zoo name.",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture of a bare weights file (e.g. ViT-B-16); with an open_clip_config.json beside the weights, "
        "it must agree with it.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
TemplatesOpt = Annotated[
    str,
    typer.Option("--templates", help="Template set (imagenet80, ensemble, single, ...) or a file, one per line."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="An unreadable image is an error (default: skip, count).")]
TextCacheOpt = Annotated[bool, typer.Option("--cache/--no-cache", help="Use the feature and text caches.")]
