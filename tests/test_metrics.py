"""Metrics on hand-made arrays, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from starft_cli.eval import metrics as M

# A fixed prediction table (8 samples, 3 classes, 3 groups); the expected values are worked out in comments.
LABELS = [0, 0, 1, 1, 1, 2, 2, 0]
PREDS = [0, 1, 1, 1, 0, 2, 0, 0]
GROUPS = [0, 0, 0, 1, 1, 1, 2, 2]
# correct:  1  0  1  1  0  1  0  1   -> 5 / 8


def one_hot_logits(preds: list[int], classes: int) -> np.ndarray:
    logits = np.zeros((len(preds), classes))
    logits[np.arange(len(preds)), preds] = 1.0
    return logits


def test_top1_from_logits_and_preds():
    assert M.top_k_accuracy(one_hot_logits(PREDS, 3), LABELS, 1) == pytest.approx(5 / 8)
    assert M.accuracy(PREDS, LABELS) == pytest.approx(5 / 8)


def test_top5_absent_with_fewer_than_five_classes():
    assert M.top_k_accuracy(one_hot_logits(PREDS, 3), LABELS, 5) is None


def test_top5_counts_labels_among_the_five_best():
    # 6 classes; sample 0: label 5 ranks 6th (miss); sample 1: label 0 ranks 5th (hit)
    logits = np.array([[6, 5, 4, 3, 2, 1], [2, 6, 5, 4, 3, 1]], dtype=float)
    assert M.top_k_accuracy(logits, [5, 0], 5) == pytest.approx(0.5)
    assert M.top_k_accuracy(logits, [5, 0], 1) == 0.0


def test_mean_per_class_recall():
    # class 0: 2/3, class 1: 2/3, class 2: 1/2
    assert M.per_class_recall(PREDS, LABELS) == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 1 / 2})
    assert M.mean_per_class_recall(PREDS, LABELS) == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)


def test_group_metrics_by_hand():
    # group 0 = samples 0,1,2 -> 2/3; group 1 = samples 3,4,5 -> 2/3; group 2 = samples 6,7 -> 1/2
    assert M.group_accuracies(PREDS, LABELS, GROUPS) == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 0.5})
    assert M.worst_group_accuracy(PREDS, LABELS, GROUPS) == pytest.approx(0.5)
    assert M.mean_group_accuracy(PREDS, LABELS, GROUPS) == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert M.worst_region_accuracy(PREDS, LABELS, GROUPS) == pytest.approx(0.5)
    assert M.worst_region_accuracy(PREDS, LABELS, GROUPS, ignore=[2]) == pytest.approx(2 / 3)  # e.g. "Other"


def test_groups_without_samples_do_not_count():
    assert M.group_accuracies([1, 1], [1, 0], [3, 7]) == {3: 1.0, 7: 0.0}


def test_macro_f1_by_hand():
    # class 0: tp 2, fp 2, fn 1 -> 4/7; class 1: tp 2, fp 1, fn 1 -> 4/6; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert M.macro_f1(PREDS, LABELS) == pytest.approx((4 / 7 + 4 / 6 + 2 / 3) / 3)


def test_macro_f1_over_true_classes_or_the_union():
    # class 0: tp 1, fn 1 -> 2/3; class 1 never true, predicted once -> F1 0
    assert M.macro_f1([0, 1], [0, 0]) == pytest.approx(2 / 3)  # WILDS: classes present in the labels
    assert M.macro_f1([0, 1], [0, 0], over="union") == pytest.approx((2 / 3 + 0) / 2)


def test_ece_by_hand():
    # confidences 0.85, 0.85, 0.65, 0.65; correct: yes, no, yes, yes (two classes)
    def row(p: float, first: bool) -> list[float]:
        return [math.log(p), math.log(1 - p)] if first else [math.log(1 - p), math.log(p)]

    logits = np.array([row(0.85, True), row(0.85, True), row(0.65, False), row(0.65, False)])
    labels = [0, 1, 1, 1]
    # bin (0.8, 0.9]: accuracy 0.5, confidence 0.85 -> 2/4 * 0.35; bin (0.6, 0.7]: 1.0 vs 0.65 -> 2/4 * 0.35
    assert M.expected_calibration_error(logits, labels, n_bins=10) == pytest.approx(0.35)


def test_ece_is_zero_for_a_perfectly_calibrated_certain_model():
    logits = np.array([[50.0, 0.0], [0.0, 50.0]])
    assert M.expected_calibration_error(logits, [0, 1]) == pytest.approx(0.0, abs=1e-12)


def test_empty_inputs_give_none_not_nan():
    empty = np.zeros((0, 3))
    assert M.top_k_accuracy(empty, [], 1) is None
    assert M.accuracy([], []) is None
    assert M.mean_per_class_recall([], []) is None
    assert M.worst_group_accuracy([], [], []) is None
    assert M.macro_f1([], []) is None
    assert M.expected_calibration_error(empty, []) is None


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.worst_group_accuracy([0, 1], [0], [0, 0])


def test_adjusted_average_accuracy_by_hand():
    """Test groups 0 and 1 with accuracies 1.0 and 0.5; the training split is 90% group 0, 10% group 1:
    adjusted = 0.9 * 1.0 + 0.1 * 0.5 = 0.95, while top1 over the 2 + 4 test samples is 4/6."""
    preds = np.array([0, 0, 1, 1, 0, 0])
    labels = np.array([0, 0, 1, 1, 1, 1])
    groups = np.array([0, 0, 1, 1, 1, 1])
    train_groups = np.array([0] * 9 + [1])
    assert M.adjusted_average_accuracy(preds, labels, groups, train_groups) == pytest.approx(0.95)
    assert M.accuracy(preds, labels) == pytest.approx(4 / 6)
    # a training group without test samples is left out and the weights renormalised
    assert M.adjusted_average_accuracy(preds, labels, groups, np.array([0, 0, 1, 2, 2, 2])) == pytest.approx(
        (2 / 3) * 1.0 + (1 / 3) * 0.5
    )
    assert M.adjusted_average_accuracy(preds, labels, groups, np.array([5, 5])) is None
    assert M.group_shares([1, 1, 0, 1]) == {0: 0.25, 1: 0.75}


# ---------------------------------------------------------------------------------------------------------------
# The registry: every metric through its registry entry, on the table above
# ---------------------------------------------------------------------------------------------------------------


def _registry_input() -> M.MetricInput:
    """The table above with 6-class one-hot logits (argmax = PREDS; ties rank lower classes first, so every label
    0..2 is among the 5 best), groups named as regions (group 2 is "Other") and a training split whose groups are
    25% group 0 and 75% group 2 (group 1 has no training samples)."""
    return M.MetricInput(
        logits=one_hot_logits(PREDS, 6),
        labels=np.array(LABELS),
        preds=np.array(PREDS),
        groups=np.array(GROUPS),
        group_names=("Europe", "Asia", "Other"),
        train_groups=np.array([0, 2, 2, 2]),
    )


REGISTRY_VALUES = {
    "top1": 5 / 8,
    "top5": 1.0,
    "mean_per_class_recall": (2 / 3 + 2 / 3 + 1 / 2) / 3,
    "macro_f1": (4 / 7 + 4 / 6 + 2 / 3) / 3,
    "mean_group_acc": (2 / 3 + 2 / 3 + 1 / 2) / 3,
    "worst_group_acc": 1 / 2,
    "worst_region_acc": 2 / 3,  # "Other" (1/2) left out
    # weights renormalised over the groups with test and training samples: 0.25 * 2/3 + 0.75 * 1/2
    "adjusted_avg_acc": 0.25 * 2 / 3 + 0.75 * 1 / 2,
    # every sample's confidence is e / (e + 5) (one logit 1, five 0): one bin, |5/8 - e / (e + 5)|
    "ece": abs(5 / 8 - math.e / (math.e + 5)),
}


def test_every_registered_metric_by_hand():
    x = _registry_input()
    assert set(REGISTRY_VALUES) == set(M.METRICS)
    for name, expected in REGISTRY_VALUES.items():
        metric = M.get_metric(name)
        values = dict(metric.values(x))
        assert values[name] == pytest.approx(expected), name
    groups = dict(M.METRICS["worst_group_acc"].values(x))
    assert groups == pytest.approx(
        {"worst_group_acc": 0.5, "group_acc[Europe]": 2 / 3, "group_acc[Asia]": 2 / 3, "group_acc[Other]": 0.5}
    )
    regions = dict(M.METRICS["worst_region_acc"].values(x))
    assert set(regions) == {"worst_region_acc", "region_acc[Europe]", "region_acc[Asia]", "region_acc[Other]"}
    assert len(M.METRICS["top1"].values(x)) == 1  # no detail records


def test_registry_flags_and_docs():
    assert [m for m, e in M.METRICS.items() if not e.higher_is_better] == ["ece"]
    assert all(e.headline and e.doc and "\n" not in e.doc for e in M.METRICS.values())
    assert M.METRICS["worst_region_acc"].needs == ("regions",)
    assert M.METRICS["adjusted_avg_acc"].needs == ("groups", "train_groups")
    assert M.detail_prefixes() == ("group_acc", "region_acc")
    assert M.detail_metric("region_acc[Asia]") is M.METRICS["worst_region_acc"]
    assert M.detail_metric("top1") is None and M.detail_metric("spurious_drift[x]") is None
    with pytest.raises(ValueError, match="unknown need"):
        M.Metric("x", "doc", lambda x: 0.0, needs=("colour",))
    with pytest.raises(ValueError, match="metric defined twice: top1"):
        M._define(M.METRICS["top1"], M.METRICS["ece"], M.METRICS["top1"])


def test_unknown_metric_names_the_known_ones():
    from starft_cli.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        M.get_metric("worst_grup_acc")
    line = info.value.one_line()
    assert line.startswith("unknown metric 'worst_grup_acc'")
    assert "Did you mean worst_group_acc" in line and "Known: " + ", ".join(M.METRICS) in line
    with pytest.raises(ConfigError, match="unknown metric 'f2' for pacs"):
        M.check_metric_names(["top1", "f2"], "for pacs")
    assert M.check_metric_names(["top1", "ece"]) == ("top1", "ece")


def test_metric_problem_says_what_is_missing():
    from types import SimpleNamespace

    def ds(groups=None, kind="group", classes=3):
        names = [f"c{i}" for i in range(classes)]
        return SimpleNamespace(name="d", classnames=names, class_subset=None, groups=groups, group_kind=kind)

    assert M.metric_problem("top5", ds(), "test") == "top5 needs at least 5 classes and d has 3"
    assert M.metric_problem("top5", ds(classes=5), "test") is None
    assert M.metric_problem("worst_group_acc", ds(), "val") == "worst_group_acc needs groups and d (val split) has none"
    assert M.metric_problem("worst_group_acc", ds([0, 1]), "val") is None
    assert (
        M.metric_problem("worst_region_acc", ds(), "test")
        == "worst_region_acc needs regions and d (test split) has none"
    )
    assert M.metric_problem("worst_region_acc", ds([0, 1]), "test") == (
        "worst_region_acc needs regions and the groups of d (test split) are not regions"
    )
    assert M.metric_problem("worst_region_acc", ds([0, 1], kind="region"), "test") is None
    assert M.metric_problem("adjusted_avg_acc", ds([0, 1]), "test", train_groups=None) == (
        "adjusted_avg_acc needs a training split with groups and d has none here"
    )
    assert M.metric_problem("adjusted_avg_acc", ds([0, 1]), "test", train_groups=[0, 1]) is None


def test_checkpoint_selection_criteria_are_registered_metrics_where_higher_is_better():
    """`finetune --select-by` keeps the checkpoint with the highest value: each criterion must be a registered
    metric for which higher is better."""
    from starft_cli.train.validate import SELECT_BY

    assert all(M.get_metric(name).higher_is_better for name in SELECT_BY)


def test_listing_metric_names_does_not_import_numpy():
    import subprocess
    import sys

    code = "import sys; from starft_cli.eval.metrics import metric_names; metric_names(); print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
