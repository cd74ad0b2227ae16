"""The evaluation engine: check every dataset's layout, then per model compute (cached) features once per
dataset, build zero-shot heads from the head cache, and turn logits into flat result records."""

from __future__ import annotations

import datetime as _dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from starft_cli.errors import DataError, UsageError
from starft_cli.eval import metrics as M
from starft_cli.eval.suites import METRICS, Suite, SuiteEntry, get_suite

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from starft_cli.models import LoadedModel, ModelRef

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PreparedDataset:
    entry: SuiteEntry
    dataset: Any  # ImageDataset
    split: str
    templates: list[str]
    templates_name: str
    metrics: tuple[str, ...] = ()  # the entry's metrics that apply to this dataset (all of them, or noted)
    train_groups: list[int] | None = None  # the training split's groups, for adjusted_avg_acc


@dataclass
class Plan:
    """What an evaluation will run (datasets checked and loaded) and what is missing."""

    suite: Suite
    datasets: list[PreparedDataset] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # one line per missing dataset: what, where, how
    missing_short: list[str] = field(default_factory=list)  # the same, as "name (problem)"
    missing_names: list[str] = field(default_factory=list)  # the same, names only
    notes: list[str] = field(default_factory=list)  # metrics of built-in suites left out, one line each


# ----------------------------------------------------------------------------------------------------------------
# Metrics: name -> how to compute it and what it needs. Every name of suites.METRICS has a rule (checked at import),
# so a metric can never be dropped for want of code; one that does not apply to a dataset is found by plan().
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInput:
    """What a metric is computed from: ``logits [N, C]``, ``labels [N]``, ``preds [N]`` (argmax), ``groups [N]``
    or None, the group names, and the training split's groups (adjusted_avg_acc)."""

    logits: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    groups: np.ndarray | None
    group_names: list[str]
    train_groups: np.ndarray | None = None


@dataclass(frozen=True)
class MetricRule:
    """``compute`` returns ``(name, value)`` pairs: the metric's own first, then any per-group detail records."""

    compute: Callable[[MetricInput], list[tuple[str, float | None]]]
    needs_groups: bool = False
    needs_train_groups: bool = False
    min_classes: int = 1


def _per_group(name: str, prefix: str, ignore_other: bool = False) -> Callable[[MetricInput], list]:
    def compute(x: MetricInput) -> list[tuple[str, float | None]]:
        assert x.groups is not None
        accs = M.group_accuracies(x.preds, x.labels, x.groups)
        if ignore_other:  # FMoW's catch-all region is left out, as WILDS does
            other = [g for g, n in enumerate(x.group_names) if n == "Other"]
            value = M.worst_region_accuracy(x.preds, x.labels, x.groups, ignore=other)
        else:
            value = M.worst_group_accuracy(x.preds, x.labels, x.groups)
        return [(name, value), *((f"{prefix}[{_group_name(x, g)}]", acc) for g, acc in accs.items())]

    return compute


def _group_name(x: MetricInput, g: int) -> str:
    return x.group_names[g] if 0 <= g < len(x.group_names) else str(g)


METRIC_RULES: dict[str, MetricRule] = {
    "top1": MetricRule(lambda x: [("top1", M.top_k_accuracy(x.logits, x.labels, 1))]),
    "top5": MetricRule(lambda x: [("top5", M.top_k_accuracy(x.logits, x.labels, 5))], min_classes=5),
    "mean_per_class_recall": MetricRule(
        lambda x: [("mean_per_class_recall", M.mean_per_class_recall(x.preds, x.labels))]
    ),
    "macro_f1": MetricRule(lambda x: [("macro_f1", M.macro_f1(x.preds, x.labels))]),
    "ece": MetricRule(lambda x: [("ece", M.expected_calibration_error(x.logits, x.labels))]),
    "mean_group_acc": MetricRule(
        lambda x: [("mean_group_acc", M.mean_group_accuracy(x.preds, x.labels, x.groups))], needs_groups=True
    ),
    "worst_group_acc": MetricRule(_per_group("worst_group_acc", "group_acc"), needs_groups=True),
    "worst_region_acc": MetricRule(_per_group("worst_region_acc", "region_acc", ignore_other=True), needs_groups=True),
    "adjusted_avg_acc": MetricRule(
        lambda x: [("adjusted_avg_acc", M.adjusted_average_accuracy(x.preds, x.labels, x.groups, x.train_groups))],
        needs_groups=True,
        needs_train_groups=True,
    ),
}
if set(METRIC_RULES) != set(METRICS):  # pragma: no cover - a programming error, caught by the test suite too
    raise RuntimeError(f"metrics without a rule or description: {sorted(set(METRIC_RULES) ^ set(METRICS))}")


def metric_problem(
    metric: str, dataset: Any, split: str, train_groups: Sequence[int] | None = None, name: str | None = None
) -> str | None:
    """Why ``metric`` does not apply to ``dataset`` (a loaded ImageDataset, called ``name`` in the message), or None
    when it does."""
    rule = METRIC_RULES[metric]
    name = name or dataset.name
    classes = len(dataset.class_subset or dataset.classnames)
    if classes < rule.min_classes:
        return f"{metric} needs at least {rule.min_classes} classes and {name} has {classes}"
    if rule.needs_groups and dataset.groups is None:
        return f"{metric} needs groups and {name} ({split} split) has none"
    if rule.needs_train_groups and not train_groups:
        return f"{metric} needs a training split with groups and {name} has none here"
    return None


def _train_groups(entry: SuiteEntry, data_root: str | Path | None, split: str) -> list[int] | None:
    """The groups of a registered dataset's training split (None when it has none or it is absent)."""
    from starft_cli.data.registry import dataset_root, get_builder

    if entry.dataset.startswith(("folder:", "csv:")) or data_root is None:
        return None
    builder = get_builder(entry.dataset)
    if "train" not in builder.info.splits or split == "train":
        return None
    try:
        train = builder.build(dataset_root(entry.dataset, data_root), "train")
    except (DataError, OSError) as exc:
        logger.info("%s: no training split for adjusted_avg_acc (%s)", entry.dataset, exc)
        return None
    return list(train.groups) if train.groups else None


def _applicable_metrics(
    result: Plan, entry: SuiteEntry, ds: Any, split: str, data_root: str | Path | None
) -> tuple[tuple[str, ...], list[int] | None]:
    """The metrics of ``entry`` that apply to ``ds``. One that does not is a :class:`UsageError` when the user named
    it, else left out with a note in ``result.notes``."""
    wants_train = any(METRIC_RULES[m].needs_train_groups for m in entry.metrics)
    train_groups = _train_groups(entry, data_root, split) if wants_train else None
    kept, problems = [], []
    for metric in entry.metrics:
        problem = metric_problem(metric, ds, split, train_groups, entry.dataset)
        if problem is None:
            kept.append(metric)
        else:
            problems.append((metric, problem))
    if problems and entry.explicit:
        applicable = [m for m in METRICS if metric_problem(m, ds, split, train_groups, entry.dataset) is None]
        raise UsageError(
            f"metric {problems[0][0]} does not apply to {entry.dataset}: "
            + "; ".join(problem for _, problem in problems),
            f"Drop {' / '.join(m for m, _ in problems)} from `metrics`; metrics that apply: {', '.join(applicable)}",
            param="metrics",
        )
    for metric, problem in problems:
        result.notes.append(f"{entry.dataset}: {metric} not computed ({problem})")
    if not kept:
        raise UsageError(f"no metric of {entry.dataset} applies to it", "; ".join(p for _, p in problems))
    return tuple(kept), train_groups


def _add_missing(plan: Plan, entry: SuiteEntry, data_root: str | Path | None, problem: str) -> None:
    plan.missing.append(_missing_line(entry, data_root, problem))
    plan.missing_short.append(f"{entry.dataset} ({problem})")
    plan.missing_names.append(entry.dataset)


def _missing_line(entry: SuiteEntry, data_root: str | Path | None, problem: str) -> str:
    from starft_cli.data.registry import get_builder

    try:
        info = get_builder(entry.dataset).info
    except DataError:
        return f"{entry.dataset}: {problem}"
    return f"{entry.dataset}: {problem}. Layout: {info.layout}. Source: {info.source}"


def plan(
    suite: Suite | str | Path,
    data_root: str | Path | None,
    templates: str | None = None,
    classnames_file: str | Path | None = None,
    skip_missing: bool = False,
) -> Plan:
    """Check and load every dataset of ``suite`` (before any model is loaded). Missing or broken datasets are
    listed in ``Plan.missing`` when ``skip_missing``; otherwise the first problem raises :class:`DataError`
    naming all of them."""
    from starft_cli.data.manage import check_dataset
    from starft_cli.data.registry import dataset_root, get_builder, load_dataset
    from starft_cli.prompts import load_templates

    suite = suite if isinstance(suite, Suite) else get_suite(suite)
    result = Plan(suite=suite)
    for entry in suite.entries:
        registered = not entry.dataset.startswith(("folder:", "csv:"))
        if registered:
            builder = get_builder(entry.dataset)
            if data_root is None and not getattr(builder, "generated", False):
                raise UsageError(
                    f"dataset '{entry.dataset}' needs `data_root`",
                    "Point it at the folder holding them",
                    param="data_root",
                )
            split = entry.split or builder.info.default_split
            if split not in builder.info.splits:
                raise UsageError(
                    f"dataset '{entry.dataset}' has no split '{split}'", f"Use one of {', '.join(builder.info.splits)}"
                )
            report = check_dataset(entry.dataset, data_root, splits=(split,))
            if not report.ok:
                _add_missing(result, entry, data_root, report.problems[0])
                continue
        else:
            split = entry.split or "test"
        try:
            if registered:  # checked above: build it without checking the layout a second time
                ds = builder.build(dataset_root(entry.dataset, data_root), split)
            else:
                ds = load_dataset(
                    entry.dataset, data_root, entry.split, classnames_file=entry.classnames or classnames_file
                )
        except DataError as exc:
            if registered:
                _add_missing(result, entry, data_root, exc.message)
                continue
            raise
        if len(ds) == 0:
            _add_missing(result, entry, data_root, f"the '{split}' split holds no images")
            continue
        name = entry.templates or templates or ds.templates
        metrics, train_groups = _applicable_metrics(result, entry, ds, split, data_root)
        result.datasets.append(
            PreparedDataset(entry, ds, split, load_templates(name), Path(str(name)).name, metrics, train_groups)
        )
    if result.missing and not skip_missing:
        raise DataError(
            f"{len(result.missing)} dataset(s) of suite '{suite.name}' are missing or broken: "
            + "; ".join(result.missing_short),
            "`starft data check NAME --data-root DIR` shows each one's layout and source; `skip_missing` (or `suite` "
            "all) runs the datasets that are present",
            param=("skip_missing", "suite"),
        )
    if not result.datasets:
        raise DataError(
            f"no dataset of suite '{suite.name}' is present under {data_root}",
            "`starft data list` shows where each should be and `starft data check NAME --data-root DIR` what is "
            "wrong with one",
        )
    return result


def _metric_values(item: PreparedDataset, x: MetricInput) -> list[tuple[str, float]]:
    """``(name, value)`` of every metric the plan kept for ``item``; an undefined value (no samples left after
    skipping unreadable images) is a warning, never silently absent."""
    out: list[tuple[str, float]] = []
    for name in item.metrics or item.entry.metrics:
        for metric, value in METRIC_RULES[name].compute(x):
            if value is None:
                where, count = item.entry.dataset, len(x.labels)
                logger.warning("%s: %s is undefined for the %d readable sample(s)", where, metric, count)
                continue
            out.append((metric, float(value)))
    return out


def logits_for(features: torch.Tensor, head: torch.Tensor, class_subset: Sequence[int] | None) -> torch.Tensor:
    """``features @ head.T``, restricted to ``class_subset`` columns when the dataset covers a subset."""
    logits = features.to(head.device, head.dtype) @ head.T
    if class_subset is not None:
        logits = logits[:, list(class_subset)]
    return logits


@functools.cache
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import starft_cli

    out = {"starft": starft_cli.__version__}
    for package, key in (("torch", "torch"), ("open_clip_torch", "open_clip"), ("torchvision", "torchvision")):
        try:
            out[key] = version(package)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def evaluate_model(
    loaded: LoadedModel,
    prepared: Plan,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    seed: int = 0,
    progress: ProgressFn | None = None,
    skipped_log: list[str] | None = None,
    fast_decode: bool = False,
) -> list[dict[str, Any]]:
    """Result records (one per dataset x metric) of one loaded model over a prepared plan. Unreadable images are
    counted in ``num_skipped``; a line per dataset that had some is appended to ``skipped_log``. Images are
    decoded in full unless ``fast_decode`` (reduced-scale JPEG decoding; records then say ``"decode": "fast"``)."""
    import torch

    from starft_cli.eval.features import compute_features
    from starft_cli.zeroshot import cached_zero_shot_head

    torch.manual_seed(seed)
    info = dict(versions())
    date = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    records: list[dict[str, Any]] = []
    for item in prepared.datasets:
        ds = item.dataset
        report = None if progress is None else (lambda done, total, n=ds.name: progress(n, done, total))
        data_fingerprint = ds.fingerprint()
        feats = compute_features(
            loaded,
            ds,
            device=device,
            batch_size=batch_size,
            workers=workers,
            strict=strict,
            use_cache=use_cache,
            progress=report,
            data_fingerprint=data_fingerprint,
            fast_decode=fast_decode,
        )
        head = cached_zero_shot_head(loaded, ds.classnames, item.templates, device=device)
        valid = feats.valid
        logits = logits_for(feats.features[valid], head, ds.class_subset).float().cpu().numpy()
        labels = np.asarray(ds.labels)[valid.numpy()]
        if ds.class_subset is not None:
            position = {c: i for i, c in enumerate(ds.class_subset)}
            labels = np.asarray([position[int(y)] for y in labels])
        groups = None if ds.groups is None else np.asarray(ds.groups)[valid.numpy()]
        base = {
            "model": loaded.ref.raw,
            "weights_fingerprint": loaded.fingerprint,
            "dataset": item.entry.dataset,
            "split": item.split,
            "num_samples": int(valid.sum()),
            "num_skipped": len(feats.skipped),
            "num_classes": len(ds.class_subset or ds.classnames),
            "data_fingerprint": data_fingerprint,
            "templates": item.templates_name,
            "suite": prepared.suite.name,
            "seed": seed,
            "decode": "fast" if fast_decode else "full",
            "date": date,
            **{f"{k}_version": v for k, v in info.items()},
        }
        x = MetricInput(
            logits=logits,
            labels=labels,
            preds=np.argmax(logits, axis=1),
            groups=groups,
            group_names=list(ds.group_names or []),
            train_groups=None if item.train_groups is None else np.asarray(item.train_groups),
        )
        for metric, value in _metric_values(item, x):
            records.append({**base, "metric": metric, "value": round(value, 6)})
        if feats.skipped:
            line = (
                f"{item.entry.dataset}: {len(feats.skipped)} unreadable image(s) skipped, e.g. {feats.skipped_names[0]}"
            )
            logger.warning("%s", line)
            if skipped_log is not None:
                skipped_log.append(f"{loaded.ref.raw} on {line}")
    return records


def evaluate(
    models: Sequence[str | ModelRef | LoadedModel] | str | ModelRef,
    suite: Suite | Plan | str | Path,
    data_root: str | Path | None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    skip_missing: bool | None = None,
    templates: str | None = None,
    classnames_file: str | Path | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    fast_decode: bool = False,
) -> pd.DataFrame:
    """Evaluate one or more models on a suite; one row per (model, dataset, metric). Each model is a reference (a
    string or a parsed :class:`~starft_cli.models.ModelRef`, loaded here) or a loaded model.

    ``suite`` is a built-in name, a TOML file, a :class:`Suite`, or a :class:`Plan` made by :func:`plan`.
    Every dataset is checked before any model is loaded. With ``skip_missing`` (default: only for the ``all``
    suite) missing datasets are left out and listed in ``df.attrs["missing"]``; ``df.attrs["skipped"]`` lists
    unreadable images that were skipped. A metric that does not apply to a dataset (see :func:`metric_problem`)
    raises :class:`UsageError` when its entry is ``explicit`` (named by the user), else it is left out and said
    in ``df.attrs["notes"]``.
    """
    import pandas as pd

    from starft_cli.models import ModelRef, load

    model_list = [models] if isinstance(models, str | ModelRef) else list(models)
    if not model_list:
        raise UsageError("no model to evaluate", "Name one or more in `models`", param="models")
    if isinstance(suite, Plan):
        prepared, resolved = suite, suite.suite
    else:
        resolved = suite if isinstance(suite, Suite) else get_suite(suite)
        skip = resolved.name == "all" if skip_missing is None else skip_missing
        prepared = plan(resolved, data_root, templates, classnames_file, skip)
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    for model in model_list:
        loaded = load(model, device=device) if isinstance(model, str | ModelRef) else model
        records.extend(
            evaluate_model(
                loaded,
                prepared,
                device,
                batch_size,
                workers,
                strict,
                use_cache,
                seed,
                progress,
                skipped,
                fast_decode=fast_decode,
            )
        )
    from starft_cli.reports.schema import FIELDS

    frame = pd.DataFrame.from_records(records, columns=list(FIELDS) if not records else None)
    frame.attrs["missing"] = list(prepared.missing)
    frame.attrs["missing_names"] = list(prepared.missing_names)
    frame.attrs["notes"] = list(prepared.notes)
    frame.attrs["skipped"] = skipped
    frame.attrs["suite"] = resolved.name
    frame.attrs["description"] = resolved.description
    return frame
