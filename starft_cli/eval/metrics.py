"""Evaluation metrics: pure functions of numpy arrays, and the registry :data:`METRICS` that names them.

``logits`` are ``[N, C]`` scores, ``labels`` and ``groups`` ``[N]`` integers, ``preds`` ``[N]`` class indices.
Every function returns plain Python floats (or dicts of them) and never NaN: a metric that is undefined for the
input (top-5 with fewer than 5 classes, no samples) is ``None`` and left out of reports.

The registry holds every metric a suite, ``--metric`` or a report may name, once: its function, what it needs
(groups, regions, a training split with groups, a number of classes), whether higher is better, whether the
leaderboards show it, and a one-line doc. Suites, the runner, the leaderboards and the plots read it; adding a
metric is one :class:`Metric` entry here. numpy is imported inside the functions, so that the CLI can list the
metric names without importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starft_cli.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    ArrayLike = Sequence[int] | Sequence[float] | np.ndarray


def _ints(values: ArrayLike) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.int64).reshape(-1)


def _check_same_length(*arrays: np.ndarray) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays differ in length: {sorted(lengths)}")
    return lengths.pop()


def top_k_accuracy(logits: np.ndarray, labels: ArrayLike, k: int = 1) -> float | None:
    """Fraction of samples whose label is among the ``k`` highest scores; None when there are fewer than
    ``k`` classes or no samples. Ties are broken by the lower class index (as ``argsort`` is stable)."""
    import numpy as np

    scores = np.asarray(logits, dtype=np.float64)
    y = _ints(labels)
    if scores.ndim != 2:
        raise ValueError("logits must be [N, C]")
    _check_same_length(scores, y)
    if len(y) == 0 or scores.shape[1] < k:
        return None
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float | None:
    """Top-1 accuracy of predicted class indices; None without samples."""
    import numpy as np

    p, y = _ints(preds), _ints(labels)
    if _check_same_length(p, y) == 0:
        return None
    return float(np.mean(p == y))


def per_class_recall(preds: ArrayLike, labels: ArrayLike) -> dict[int, float]:
    """Recall of every class that occurs in ``labels``."""
    import numpy as np

    p, y = _ints(preds), _ints(labels)
    _check_same_length(p, y)
    return {int(c): float(np.mean(p[y == c] == c)) for c in np.unique(y)}


def mean_per_class_recall(preds: ArrayLike, labels: ArrayLike) -> float | None:
    """Unweighted mean over the classes present in ``labels`` of each class's recall (balanced accuracy)."""
    import numpy as np

    recalls = per_class_recall(preds, labels)
    return float(np.mean(list(recalls.values()))) if recalls else None


def group_accuracies(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> dict[int, float]:
    """Accuracy within every group that has samples."""
    import numpy as np

    p, y, g = _ints(preds), _ints(labels), _ints(groups)
    _check_same_length(p, y, g)
    return {int(k): float(np.mean(p[g == k] == y[g == k])) for k in np.unique(g)}


def worst_group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> float | None:
    """The lowest accuracy over the groups that have samples."""
    accs = group_accuracies(preds, labels, groups)
    return min(accs.values()) if accs else None


def mean_group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> float | None:
    """Unweighted mean of the per-group accuracies (each non-empty group counts once)."""
    import numpy as np

    accs = group_accuracies(preds, labels, groups)
    return float(np.mean(list(accs.values()))) if accs else None


def group_shares(groups: ArrayLike) -> dict[int, float]:
    """Each group's share of the samples (fractions summing to 1); empty without samples."""
    import numpy as np

    g = _ints(groups)
    if len(g) == 0:
        return {}
    values, counts = np.unique(g, return_counts=True)
    return {int(k): float(c / len(g)) for k, c in zip(values, counts, strict=True)}


def adjusted_average_accuracy(
    preds: ArrayLike, labels: ArrayLike, groups: ArrayLike, train_groups: ArrayLike
) -> float | None:
    """The group-weighted "adjusted average accuracy" of group-robustness papers (Sagawa et al. 2020 and later,
    on Waterbirds): each test group's accuracy weighted by that group's share of the **training** split,
    ``sum_g acc_test(g) * n_train(g) / sum_g' n_train(g')`` over the groups that have test samples (the weights are
    renormalised over those). Plain ``top1`` weights the groups by their test shares instead. None when no group
    has both test and training samples."""
    accs = group_accuracies(preds, labels, groups)
    shares = group_shares(train_groups)
    common = [k for k in accs if shares.get(k, 0.0) > 0]
    if not common:
        return None
    total = sum(shares[k] for k in common)
    return float(sum(accs[k] * shares[k] for k in common) / total)


def macro_f1(preds: ArrayLike, labels: ArrayLike, over: str = "true") -> float | None:
    """Unweighted mean of per-class F1.

    ``over="true"`` (default) averages over the classes that occur in ``labels``, the convention of the WILDS
    iWildCam benchmark (scikit-learn's ``f1_score(average="macro", labels=unique(y_true))``): a wrongly predicted
    absent class does not enter the mean, but still lowers the recall of the true class.
    ``over="union"`` also counts classes that are only predicted (their F1 is 0), like scikit-learn's default.
    """
    import numpy as np

    p, y = _ints(preds), _ints(labels)
    if _check_same_length(p, y) == 0:
        return None
    if over not in ("true", "union"):
        raise ValueError("over must be 'true' or 'union'")
    classes = np.unique(y) if over == "true" else np.union1d(np.unique(y), np.unique(p))
    scores = []
    for c in classes:
        tp = float(np.sum((p == c) & (y == c)))
        fp = float(np.sum((p == c) & (y != c)))
        fn = float(np.sum((p != c) & (y == c)))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def worst_region_accuracy(
    preds: ArrayLike, labels: ArrayLike, regions: ArrayLike, ignore: Sequence[int] = ()
) -> float | None:
    """The lowest accuracy over the regions that have samples, leaving out the regions in ``ignore`` (FMoW
    leaves out its catch-all region "Other")."""
    accs = {k: v for k, v in group_accuracies(preds, labels, regions).items() if k not in set(ignore)}
    return min(accs.values()) if accs else None


def expected_calibration_error(logits: np.ndarray, labels: ArrayLike, n_bins: int = 15) -> float | None:
    """ECE with ``n_bins`` equal-width confidence bins over (0, 1]: sum over bins of
    ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``; confidence = max softmax probability.

    A sample with confidence exactly ``b / n_bins`` falls into bin ``b`` (bins are right-closed).
    """
    import numpy as np

    scores = np.asarray(logits, dtype=np.float64)
    y = _ints(labels)
    if scores.ndim != 2:
        raise ValueError("logits must be [N, C]")
    n = _check_same_length(scores, y)
    if n == 0:
        return None
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    correct = (np.argmax(scores, axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        mask = bins == b
        ece += mask.sum() / n * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

NEEDS = ("groups", "regions", "train_groups")  # what a metric may need beyond logits and labels


@dataclass(frozen=True)
class MetricInput:
    """What a metric is computed from, for one dataset: ``logits [N, C]``, ``labels [N]`` and ``preds [N]``
    (argmax of the logits) as class indices, ``groups [N]`` (None without groups), the names the group indices
    refer to, and the training split's groups ``[M]`` (for adjusted_avg_acc; None when absent)."""

    logits: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    groups: np.ndarray | None = None
    group_names: Sequence[str] = ()
    train_groups: np.ndarray | None = None

    def group_name(self, group: int) -> str:
        return self.group_names[group] if 0 <= group < len(self.group_names) else str(group)


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute`` gives its value from a :class:`MetricInput` (None when undefined for the input).

    ``needs`` lists what it needs besides logits and labels (``groups``; ``regions``: groups that are geographic
    regions; ``train_groups``: a training split with groups), ``min_classes`` the classes it needs: at least 2 for
    every metric, since with one class every prediction is that class (top-1 100%, ECE 0, whatever the model);
    ``min_groups`` the groups a group metric needs (with one, worst- and mean-group accuracy are top-1). ``detail``
    names the per-group records it also writes (``<detail>[<group name>]``, the accuracy of each group; shown in
    plots, not in leaderboards). ``headline``: the leaderboards show it (in registry order). ``doc`` is one line,
    shown under leaderboards as ``name = doc``."""

    name: str
    doc: str
    compute: Callable[[MetricInput], float | None]
    needs: tuple[str, ...] = ()
    min_classes: int = 2
    min_groups: int = 2
    higher_is_better: bool = True
    headline: bool = True
    detail: str | None = None

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"metric {self.name}: unknown need {unknown[0]!r} (one of {', '.join(NEEDS)})")

    @property
    def needs_groups(self) -> bool:
        return "groups" in self.needs or "regions" in self.needs

    def values(self, x: MetricInput) -> list[tuple[str, float | None]]:
        """``(record name, value)`` pairs: the metric's own first, then its per-group ``detail`` records."""
        out: list[tuple[str, float | None]] = [(self.name, self.compute(x))]
        if self.detail is not None and x.groups is not None:
            accs = group_accuracies(x.preds, x.labels, x.groups)
            out.extend((f"{self.detail}[{x.group_name(g)}]", acc) for g, acc in accs.items())
        return out

    def problem(
        self, dataset: Any, split: str, train_groups: Sequence[int] | None = None, name: str | None = None
    ) -> str | None:
        """Why this metric does not apply to ``dataset`` (a loaded ImageDataset, called ``name`` in the message;
        its ``split``), or None when it does."""
        name = name or dataset.name
        classes = len(dataset.class_subset or dataset.classnames)
        if classes < self.min_classes:
            return f"{self.name} needs at least {self.min_classes} classes and {name} has {classes}"
        if "regions" in self.needs and dataset.groups is not None and getattr(dataset, "group_kind", "") != "region":
            return f"{self.name} needs regions and the groups of {name} ({split} split) are not regions"
        kind = "regions" if "regions" in self.needs else "groups"
        if self.needs_groups and dataset.groups is None:
            return f"{self.name} needs {kind} and {name} ({split} split) has none"
        if self.needs_groups and len(set(dataset.groups)) < self.min_groups:
            count = len(set(dataset.groups))
            return f"{self.name} needs at least {self.min_groups} {kind} and {name} ({split} split) has {count}"
        if "train_groups" in self.needs and not train_groups:
            return f"{self.name} needs a training split with groups and {name} has none here"
        return None


def _worst_region(x: MetricInput) -> float | None:
    """The lowest region accuracy, leaving out the catch-all region "Other" (as WILDS does for FMoW)."""
    other = [g for g, n in enumerate(x.group_names) if n == "Other"]
    return worst_region_accuracy(x.preds, x.labels, x.groups, ignore=other)


def _define(*metrics: Metric) -> dict[str, Metric]:
    """The registry of ``metrics``, keyed by name; a name or detail prefix used twice is a programming error."""
    names = [m.name for m in metrics]
    details = [m.detail for m in metrics if m.detail]
    for kind, values in (("metric", names), ("detail prefix", details)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{kind} defined twice: {', '.join(twice)}")
    return {m.name: m for m in metrics}


# In leaderboard order: the columns of a dataset follow this order.
METRICS: dict[str, Metric] = _define(
    Metric(
        "top1",
        "accuracy over all test samples (sample-weighted: this is the 'average accuracy')",
        lambda x: top_k_accuracy(x.logits, x.labels, 1),
    ),
    Metric(
        "adjusted_avg_acc",
        "test group accuracies weighted by the training split's group shares (the 'adjusted average accuracy' of "
        "group-robustness papers on Waterbirds)",
        lambda x: adjusted_average_accuracy(x.preds, x.labels, x.groups, x.train_groups),
        needs=("groups", "train_groups"),
    ),
    Metric(
        "worst_group_acc",
        "the lowest group accuracy",
        lambda x: worst_group_accuracy(x.preds, x.labels, x.groups),
        needs=("groups",),
        detail="group_acc",
    ),
    Metric(
        "mean_group_acc",
        "unweighted mean of group accuracies",
        lambda x: mean_group_accuracy(x.preds, x.labels, x.groups),
        needs=("groups",),
    ),
    Metric(
        "macro_f1",
        "unweighted mean of per-class F1 over the classes present in the labels (as WILDS reports it)",
        lambda x: macro_f1(x.preds, x.labels),
    ),
    Metric(
        "worst_region_acc",
        "the lowest region accuracy, region 'Other' left out (FMoW, as WILDS reports it)",
        _worst_region,
        needs=("regions",),
        detail="region_acc",
    ),
    Metric(
        "mean_per_class_recall",
        "unweighted mean over classes of each class's recall",
        lambda x: mean_per_class_recall(x.preds, x.labels),
    ),
    Metric(
        "top5",
        "top-5 accuracy (needs at least 5 classes)",
        lambda x: top_k_accuracy(x.logits, x.labels, 5),
        min_classes=5,
    ),
    Metric(
        "ece",
        "expected calibration error over 15 equal-width confidence bins",
        lambda x: expected_calibration_error(x.logits, x.labels),
        higher_is_better=False,
    ),
)


def metric_names() -> tuple[str, ...]:
    """Every registered metric, in leaderboard order."""
    return tuple(METRICS)


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; :class:`~starft_cli.errors.ConfigError` naming the known ones otherwise."""
    metric = METRICS.get(name)
    if metric is None:
        raise unknown_metric(name)
    return metric


def unknown_metric(name: str, where: str = "") -> ConfigError:
    """The error for a metric name that is not registered (``where``: e.g. "for waterbirds")."""
    from starft_cli.suggest import did_you_mean

    return ConfigError(
        f"unknown metric '{name}'" + (f" {where}" if where else ""),
        did_you_mean(name, METRICS, then=f"Known: {', '.join(METRICS)}"),
    )


def check_metric_names(names: Iterable[str], where: str = "") -> tuple[str, ...]:
    """``names`` as a tuple when every one is registered; :class:`ConfigError` for the first that is not."""
    names = tuple(names)
    for name in names:
        if name not in METRICS:
            raise unknown_metric(name, where)
    return names


def metric_problem(
    metric: str, dataset: Any, split: str, train_groups: Sequence[int] | None = None, name: str | None = None
) -> str | None:
    """Why the registered ``metric`` does not apply to ``dataset`` (see :meth:`Metric.problem`), or None."""
    return get_metric(metric).problem(dataset, split, train_groups, name)


def detail_metric(record_metric: str) -> Metric | None:
    """The registered metric whose per-group detail record ``record_metric`` is (``group_acc[x]`` ->
    worst_group_acc), or None."""
    prefix, bracket, _ = record_metric.partition("[")
    if not bracket or not record_metric.endswith("]"):
        return None
    return next((m for m in METRICS.values() if m.detail == prefix), None)


def detail_prefixes() -> tuple[str, ...]:
    """The prefixes of per-group detail records (``group_acc``, ``region_acc``), each once."""
    return tuple(dict.fromkeys(m.detail for m in METRICS.values() if m.detail))
