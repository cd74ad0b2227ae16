"""A distributed sampler that can start in the middle of an epoch (for exact resume)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch.utils.data


class ResumableSampler(torch.utils.data.DistributedSampler):
    """torch's DistributedSampler (a permutation per epoch from ``seed + epoch``, one stride per process)
    that skips the first ``start`` samples of this process's share."""

    def __init__(self, dataset_size: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
