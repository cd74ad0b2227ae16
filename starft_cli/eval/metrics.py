"""Evaluation metrics as pure functions of numpy arrays.

``logits`` are ``[N, C]`` scores, ``labels`` and ``groups`` ``[N]`` integers, ``preds`` ``[N]`` class indices.
Every function returns plain Python floats (or dicts of them) and never NaN: a metric that is undefined for the
input (top-5 with fewer than 5 classes, no samples) is ``None`` and left out of reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[int] | Sequence[float] | np.ndarray


def _ints(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _check_same_length(*arrays: np.ndarray) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays differ in length: {sorted(lengths)}")
    return lengths.pop()


def top_k_accuracy(logits: np.ndarray, labels: ArrayLike, k: int = 1) -> float | None:
    """Fraction of samples whose label is among the ``k`` highest scores; None when there are fewer than
    ``k`` classes or no samples. Ties are broken by the lower class index (as ``argsort`` is stable)."""
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
    p, y = _ints(preds), _ints(labels)
    if _check_same_length(p, y) == 0:
        return None
    return float(np.mean(p == y))


def per_class_recall(preds: ArrayLike, labels: ArrayLike) -> dict[int, float]:
    """Recall of every class that occurs in ``labels``."""
    p, y = _ints(preds), _ints(labels)
    _check_same_length(p, y)
    return {int(c): float(np.mean(p[y == c] == c)) for c in np.unique(y)}


def mean_per_class_recall(preds: ArrayLike, labels: ArrayLike) -> float | None:
    """Unweighted mean over the classes present in ``labels`` of each class's recall (balanced accuracy)."""
    recalls = per_class_recall(preds, labels)
    return float(np.mean(list(recalls.values()))) if recalls else None


def group_accuracies(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> dict[int, float]:
    """Accuracy within every group that has samples."""
    p, y, g = _ints(preds), _ints(labels), _ints(groups)
    _check_same_length(p, y, g)
    return {int(k): float(np.mean(p[g == k] == y[g == k])) for k in np.unique(g)}


def worst_group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> float | None:
    """The lowest accuracy over the groups that have samples."""
    accs = group_accuracies(preds, labels, groups)
    return min(accs.values()) if accs else None


def mean_group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> float | None:
    """Unweighted mean of the per-group accuracies (each non-empty group counts once)."""
    accs = group_accuracies(preds, labels, groups)
    return float(np.mean(list(accs.values()))) if accs else None


def group_shares(groups: ArrayLike) -> dict[int, float]:
    """Each group's share of the samples (fractions summing to 1); empty without samples."""
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
