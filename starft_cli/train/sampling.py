"""A distributed sampler that can start in the middle of an epoch (for exact resume), over the whole training set
or over the training part of a held-out split (:mod:`starft_cli.train.holdout`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch.utils.data


class ResumableSampler(torch.utils.data.DistributedSampler):
    """torch's DistributedSampler (a permutation per epoch from ``seed + epoch``, one stride per process, the last
    share padded with the permutation's first samples so every process has as many) that skips the first ``start``
    samples of this process's share.

    With ``indices`` the permutation runs over those dataset indices (the training part of a held-out split) and
    yields them; otherwise over ``range(dataset_size)``."""

    def __init__(
        self, dataset_size: int, num_replicas: int, rank: int, seed: int, indices: Sequence[int] | None = None
    ) -> None:
        self.indices = None if indices is None else list(indices)
        size = dataset_size if self.indices is None else len(self.indices)
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        positions = itertools.islice(super().__iter__(), self.start, None)
        if self.indices is None:
            return positions
        return (self.indices[p] for p in positions)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
