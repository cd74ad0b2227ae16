"""Training on data with an unreadable image: the sample is replaced by the next readable one, and counted.

A long run must not die at hour three on one corrupt file that no check before step 0 found (decoding every
image first would cost as much as an epoch of data loading). ``eval`` and ``classify`` skip such an image and
count it; training cannot leave a hole in a batch (every micro-batch has the same size on every process), so the
sample's place is taken by the next readable sample in dataset order, with that sample's own label and caption:
deterministic, so a resumed run draws the same replacement. With ``strict`` the first unreadable image stops the
run instead.
"""

from __future__ import annotations

from typing import Any

import torch

from starft_cli.errors import DataError, ImageError


class SkipUnreadable(torch.utils.data.Dataset):
    """``samples`` (a :class:`~starft_cli.data.pipeline.TrainSamples`) whose items are ``(image, label, index,
    problem)``: ``problem`` is ``""``, or the one-line error of the unreadable image that was at ``index``'s place
    (its replacement's ``index`` is returned, so its caption matches).

    Raises:
        ImageError: with ``strict``, the first unreadable image.
        DataError: no image of the data can be read.
    """

    def __init__(self, samples: Any, strict: bool = False) -> None:
        self.samples = samples
        self.strict = strict

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return self.samples.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.samples.epoch = value

    def __getitem__(self, index: int) -> tuple[Any, int, int, str]:
        n = len(self.samples)
        problem = ""
        for k in range(n):
            try:
                image, label, at = self.samples[(index + k) % n]
            except ImageError as exc:
                if self.strict:
                    raise
                problem = problem or exc.one_line()
                continue
            return image, label, at, problem
        raise DataError("no image of the training data can be read", "Check the data with `starft data check --deep`")
