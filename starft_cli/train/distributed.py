"""Distributed helpers: the process group from torchrun's environment, gathers with gradients."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starft_cli.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_environment() -> DistEnv:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun (absent: one process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK/WORLD_SIZE/LOCAL_RANK are not integers", "Launch with torchrun") from None
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo otherwise) if there is more than one process."""
    import torch.distributed as dist

    if not env.distributed or dist.is_initialized():
        return
    from starft_cli.device import cuda_call_args

    backend = "nccl" if device.type == "cuda" else "gloo"
    extra = cuda_call_args(device).process_group  # NCCL: the process's own indexed device
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, **extra)


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """The device this process trains on: under torchrun, the CUDA device of its local rank; always indexed for
    CUDA (an index-less ``cuda`` becomes ``cuda:<local rank>``).

    Raises:
        UsageError: the local rank has no CUDA device.
    """
    import torch

    if device.type != "cuda":
        return device
    if env.distributed or device.index is None:
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise UsageError(
                f"local rank {env.local_rank} needs CUDA device {env.local_rank}, but there are {count}",
                "Start at most one process per GPU (torchrun --nproc-per-node N with N <= the GPU count)",
            )
        return torch.device("cuda", env.local_rank)
    return device


def gather_with_grad(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every process's ``tensor`` in rank order; gradients flow back to each process's part."""
    if not env.distributed:
        return tensor
    import warnings

    import torch
    import torch.distributed.nn as dist_nn

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(tensor), dim=0)


def gather_no_grad(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.distributed:
        return tensor
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def mean_over_ranks(values: torch.Tensor, env: DistEnv) -> list[float]:
    """Average a small tensor of scalars across processes (for logging); one device sync."""
    if env.distributed:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        values /= env.world_size
    return [float(v) for v in values.tolist()]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()
