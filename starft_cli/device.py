"""Resolve ``--device`` once, to an indexed device; everything else receives a ``torch.device``.

``auto`` and ``cuda`` become ``cuda:<index>`` here (the local rank's device under torchrun, else device 0), so
no CUDA-only call ever sees an index-less ``cuda`` device: :func:`cuda_call_args` derives the arguments of every
such call (``torch.cuda.set_device``, autocast, ``GradScaler``, fused AdamW, DDP ``device_ids``, pinned memory)
from that one device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starft_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _local_rank() -> int | None:
    """torchrun's ``LOCAL_RANK`` (None when not launched by torchrun)."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"LOCAL_RANK '{value}' is not an integer", "Launch with torchrun") from None


def default_cuda_index() -> int:
    """The CUDA device this process uses when none is named: ``LOCAL_RANK`` under torchrun, else 0."""
    import torch

    index = _local_rank() or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(
            f"LOCAL_RANK {index} needs CUDA device {index}, but there are {count}",
            "Start at most one process per GPU (torchrun --nproc-per-node N with N <= the GPU count)",
        )
    return index


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, checking that it exists.

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:<LOCAL_RANK or 0>``).

    Raises:
        UsageError: an unknown spelling, or a device that is not there.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", default_cuda_index())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device '{spec}'", f"Use one of {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device '{spec}' asked for but CUDA is not available", "Set `device` to cpu or auto", param="device"
            )
        if device.index is None:
            return torch.device("cuda", default_cuda_index())
        if device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA device(s))",
                "Pick an index below the device count",
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UsageError(
                "device 'mps' asked for but MPS is not available", "Set `device` to cpu or auto", param="device"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device '{spec}'", f"Use one of {DEVICE_CHOICES}")
    return device


@dataclass(frozen=True)
class CudaCallArgs:
    """The arguments the training loop passes to device-specific calls, all derived from one device.

    ``set_device`` is the index for ``torch.cuda.set_device`` (None: do not call it); ``autocast_device_type``
    for ``torch.autocast``; ``scaler_device`` for ``torch.amp.GradScaler``; ``fused_adamw`` for
    ``torch.optim.AdamW(fused=...)``; ``ddp`` the keyword arguments of ``DistributedDataParallel``;
    ``pin_memory`` for the DataLoader (pinned memory goes to the current CUDA device, the one ``set_device``
    selected, so no ``pin_memory_device`` is passed: it is deprecated); ``process_group`` the extra keyword
    arguments of ``torch.distributed.init_process_group`` (NCCL's ``device_id``, so that collectives do not guess
    the device).
    """

    set_device: int | None
    autocast_device_type: str
    scaler_device: str
    fused_adamw: bool | None
    ddp: dict[str, Any]
    pin_memory: bool
    process_group: dict[str, Any]


def cuda_call_args(device: torch.device) -> CudaCallArgs:
    """The arguments of every CUDA-only call for ``device``.

    Raises:
        ValueError: ``device`` is a CUDA device without an index (resolve it with :func:`resolve_device`).
    """
    if device.type == "cuda" and device.index is None:
        raise ValueError("an index-less 'cuda' device reached the CUDA calls; resolve it with resolve_device()")
    cuda = device.type == "cuda"
    return CudaCallArgs(
        set_device=device.index if cuda else None,
        autocast_device_type=device.type,
        scaler_device=device.type,
        fused_adamw=True if cuda else None,
        ddp={"device_ids": [device.index] if cuda else None, **_ddp_buffer_kwargs()},
        pin_memory=cuda,
        process_group=_process_group_kwargs(device) if cuda else {},
    )


def _process_group_kwargs(device: torch.device) -> dict[str, Any]:
    import inspect

    import torch.distributed as dist

    if "device_id" in inspect.signature(dist.init_process_group).parameters:
        return {"device_id": device}
    return {}


def _ddp_buffer_kwargs() -> dict[str, Any]:
    """Do not re-broadcast buffers in every forward (CLIP's are constants): ``forward_sync_buffers=False`` where
    torch has it (``broadcast_buffers`` is deprecated there), ``broadcast_buffers=False`` before."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
