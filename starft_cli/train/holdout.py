"""Model selection without touching a reported split: ``--val-data holdout:FRACTION`` carves a seeded,
class-stratified validation split out of the training data (never trained on), and :func:`selection_warnings`
says when the split that selects ``checkpoints/best`` is one that a benchmark suite reports.

Nothing here imports torch at module level (the configuration parses ``holdout:`` specs)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

HOLDOUT_PREFIX = "holdout:"
MAX_FRACTION = 0.5


def parse_holdout(spec: str | None) -> float | None:
    """The fraction of ``holdout:FRACTION`` (a number in (0, 0.5]), or None for any other data reference.

    Raises:
        ValueError: ``holdout:`` followed by something that is not such a number (the message says what).
    """
    if spec is None or not spec.startswith(HOLDOUT_PREFIX):
        return None
    text = spec[len(HOLDOUT_PREFIX) :].strip()
    try:
        fraction = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not 0.0 < fraction <= MAX_FRACTION:
        raise ValueError(f"the fraction must be in (0, {MAX_FRACTION:g}] (got {text})")
    return fraction


def holdout_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, class-stratified split of a training set into (train indices, held-out indices), both sorted.

    For each class c (in label order) with n_c samples, ``round(fraction * n_c)`` of them, at most ``n_c - 1``
    (every class keeps a training sample), are held out, chosen by a permutation from one CPU generator seeded by
    a hash of ``("holdout", seed, fraction)``. The split is a function of (labels, fraction, seed) only: the same
    on every process, after a resume and on every machine. The two parts are disjoint and cover every index.
    """
    import torch

    digest = hashlib.sha256(f"holdout/{int(seed)}/{float(fraction)!r}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63 - 1))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    held: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        k = min(round(fraction * len(members)), len(members) - 1)
        order = torch.randperm(len(members), generator=gen).tolist()
        held.extend(members[j] for j in order[:k])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


class IndexView:
    """The samples ``indices`` of ``dataset`` (an :class:`~starft_cli.data.base.ImageDataset`) as a dataset of
    their own, for validation: ``view[i]`` is ``dataset[indices[i]]``; class names, templates and group names are
    the dataset's, labels and groups the selected samples'."""

    def __init__(self, dataset: Any, indices: Sequence[int], name: str) -> None:
        self.base = dataset
        self.indices = list(indices)
        self.name = name
        self.classnames = dataset.classnames
        self.templates = getattr(dataset, "templates", None)
        self.labels = [dataset.labels[i] for i in self.indices]
        groups = getattr(dataset, "groups", None)
        self.groups = None if groups is None else [groups[i] for i in self.indices]
        self.group_names = getattr(dataset, "group_names", None)
        self.group_kind = getattr(dataset, "group_kind", "group")
        self.split = getattr(dataset, "split", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]

    def with_transform(self, transform: Any) -> IndexView:
        """The same samples, read with ``transform``."""
        return IndexView(self.base.with_transform(transform), self.indices, self.name)


def selection_warnings(
    val_data: str | None,
    val_split: str | None,
    train_data: str | None,
    train_split: str | None,
    what: str = "checkpoints/best",
    instead: str = "Select on --val-data holdout:FRACTION (a held-out part of the training data), or report "
    "checkpoints/last",
) -> list[str]:
    """One line per reason why choosing ``what`` on ``val_data`` / ``val_split`` (the split actually loaded; None:
    the dataset's default split) biases a reported number: the split is one a built-in evaluation suite reports
    (ImageNet val is the domain-shift suite's in-distribution accuracy, Waterbirds test its group accuracies, ...),
    or it is the training split itself. ``instead`` ends the line. Nothing for ``holdout:`` data or registered
    data's own validation splits."""
    if val_data is None or parse_holdout(val_data) is not None:
        return []
    from starft_cli.data.registry import get_builder, list_datasets
    from starft_cli.eval.suites import BUILTIN_SUITES

    out = []
    if val_data == train_data and val_split == train_split:
        out.append(
            f"{what} is selected on the training data itself ({val_data} {val_split}): use --val-data holdout:0.02 "
            "for a held-out part of it"
        )
    if val_data not in list_datasets():
        return out
    val_split = val_split or get_builder(val_data).info.default_split
    reported = []
    for suite in BUILTIN_SUITES.values():
        for entry in suite.entries:
            split = entry.split or get_builder(entry.dataset).info.default_split
            if entry.dataset == val_data and split == val_split:
                reported.append(suite.name)
    if reported:
        out.append(
            f"{what} is selected on {val_data} {val_split}, which the {', '.join(reported)} suite(s) report: a "
            f"number measured there on it is optimistically biased. {instead}"
        )
    return out
