"""Resolve ``--device`` once; everything else receives a ``torch.device``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starft_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, checking that it exists."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device '{spec}'", f"Use one of {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device '{spec}' asked for but CUDA is not available", "Use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA device(s))",
                "Pick an index below the device count",
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UsageError("device 'mps' asked for but MPS is not available", "Use --device cpu or auto")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device '{spec}'", f"Use one of {DEVICE_CHOICES}")
    return device
