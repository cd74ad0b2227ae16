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

from starft_cli.data.registry import Missing
from starft_cli.errors import DataError, SplitError, UsageError
from starft_cli.eval.metrics import METRICS, MetricInput, metric_problem
from starft_cli.eval.suites import Suite, SuiteEntry, get_suite

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
    protocol: Any = None  # the ProtocolEntry naming its classes and templates (None: folder:/csv: data)


@dataclass
class Plan:
    """What an evaluation will run (datasets checked and loaded) and what is missing."""

    suite: Suite
    datasets: list[PreparedDataset] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # one line per missing dataset: what, where, how
    missing_short: list[str] = field(default_factory=list)  # the same, as "name (problem)"
    missing_names: list[str] = field(default_factory=list)  # the same, names only
    notes: list[str] = field(default_factory=list)  # metrics of built-in suites left out, one line each


def _train_groups(entry: SuiteEntry, data_root: str | Path | None, split: str) -> list[int] | None:
    """The groups of a registered dataset's training split (None when it has none or it is absent)."""
    from starft_cli.data.registry import is_generic, resolve

    if is_generic(entry.dataset) or data_root is None or split == "train":
        return None
    try:
        train = resolve(entry.dataset, data_root, "train")
    except SplitError:  # no training split
        return None
    except (DataError, OSError) as exc:
        logger.info("%s: no training split for adjusted_avg_acc (%s)", entry.dataset, exc)
        return None
    if isinstance(train, Missing):
        logger.info("%s: no training split for adjusted_avg_acc (%s)", entry.dataset, train.problem)
        return None
    return list(train.groups) if train.groups else None


def _applicable_metrics(
    result: Plan, entry: SuiteEntry, ds: Any, split: str, data_root: str | Path | None
) -> tuple[tuple[str, ...], list[int] | None]:
    """The metrics of ``entry`` that apply to ``ds``. One that does not is a :class:`UsageError` when the user named
    it, else left out with a note in ``result.notes``."""
    wants_train = any("train_groups" in METRICS[m].needs for m in entry.metrics)
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


def _add_missing(plan: Plan, missing: Missing) -> None:
    plan.missing.append(missing.line())
    plan.missing_short.append(missing.short())
    plan.missing_names.append(missing.name)


def plan(
    suite: Suite | str | Path,
    data_root: str | Path | None,
    templates: str | None = None,
    classnames_file: str | Path | None = None,
    skip_missing: bool = False,
    protocol: str = "reference",
) -> Plan:
    """Check and load every dataset of ``suite`` (before any model is loaded), each through
    :func:`starft_cli.data.registry.resolve`, its class names and default templates those of ``protocol``
    (:mod:`starft_cli.data.protocols`; explicit ``templates`` win). Missing or broken datasets are listed in
    ``Plan.missing`` when ``skip_missing``; otherwise the first problem raises :class:`DataError` naming all of
    them. A split a dataset lacks raises :class:`~starft_cli.errors.SplitError`, a registered dataset without
    ``data_root`` :class:`~starft_cli.errors.DataRootError` (both usage errors)."""
    from starft_cli.data.protocols import apply_protocol, check_protocol
    from starft_cli.data.registry import is_generic, resolve
    from starft_cli.prompts import load_templates

    check_protocol(protocol)
    suite = suite if isinstance(suite, Suite) else get_suite(suite)
    result = Plan(suite=suite)
    for entry in suite.entries:
        ds = resolve(entry.dataset, data_root, entry.split, entry.classnames or classnames_file)
        if isinstance(ds, Missing):
            _add_missing(result, ds)
            continue
        split = ds.split
        proto = None
        if not is_generic(entry.dataset):
            ds, proto = apply_protocol(ds, protocol)
        name = entry.templates or templates  # explicit templates win over the protocol's
        if name is None and proto is not None:
            template_list, template_name = proto.template_list(), proto.templates_name
        else:
            name = name or ds.templates
            template_list, template_name = load_templates(name), Path(str(name)).name
        metrics, train_groups = _applicable_metrics(result, entry, ds, split, data_root)
        result.datasets.append(
            PreparedDataset(entry, ds, split, template_list, template_name, metrics, train_groups, proto)
        )
        result.notes.extend(_protocol_notes(result.notes, proto, ds))
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


def _protocol_notes(notes: list[str], proto: Any, ds: Any) -> list[str]:
    """The lines a dataset's protocol adds to the notes (not already there): a fallback to the default protocol,
    classes that share a prompt, a split the protocol defines."""
    if proto is None:
        return []
    lines = []
    if proto.asked != proto.protocol:
        lines.append(f"{proto.dataset}: protocol '{proto.asked}' does not define it; '{proto.protocol}' used")
    shared = proto.shared_note()
    if shared:
        lines.append(shared)
    rule = getattr(ds, "split_rule", None)
    if rule:
        lines.append(rule)
    return [line for line in lines if line not in notes]


def _metric_values(item: PreparedDataset, x: MetricInput) -> list[tuple[str, float]]:
    """``(name, value)`` of every metric the plan kept for ``item`` (its registry entry's own value, then its
    per-group detail records); an undefined value (no samples left after skipping unreadable images) is a warning,
    never silently absent."""
    out: list[tuple[str, float]] = []
    for name in item.metrics or item.entry.metrics:
        for metric, value in METRICS[name].values(x):
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


def _protocol_fields(item: PreparedDataset) -> dict[str, Any]:
    """The record fields naming where a dataset's class names and templates (and a protocol-defined split) come
    from: ``protocol``, ``protocol_source`` and, where the protocol defines the split, ``split_rule``."""
    proto = item.protocol
    if proto is None:
        return {"protocol": "user-given", "protocol_source": "the data's own class names"}
    out = {"protocol": proto.protocol, "protocol_source": proto.source}
    rule = getattr(item.dataset, "split_rule", None)
    if rule:
        out["split_rule"] = rule
    return out


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
    from starft_cli.zeroshot import cached_zero_shot_head, trained_head

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
        # a classifier method's own head where it covers the classes; a zero-shot head from the templates otherwise
        # a trained head's rows are named as the data it was trained on: the names the dataset was built with
        head = trained_head(loaded, getattr(ds, "built_classnames", ds.classnames), device=device)
        head_kind = "trained" if head is not None else "zero-shot"
        if head is None:
            head = cached_zero_shot_head(loaded, ds.classnames, item.templates, device=device, use_cache=use_cache)
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
            "templates": item.templates_name if head_kind == "zero-shot" else "trained head",
            **_protocol_fields(item),
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


@dataclass
class EvalResult:
    """What :func:`evaluate` / :func:`evaluate_plan` return.

    ``frame``: one row per (model, dataset, split, metric) record (columns: :data:`starft_cli.reports.FIELDS`);
    ``suite``: the suite evaluated; ``missing``: one line per dataset left out as absent or broken (what, where,
    how to get it) and ``missing_names`` their names; ``skipped``: one line per (model, dataset) that had unreadable
    images (skipped and counted in ``num_skipped``); ``notes``: metrics of built-in suites that did not apply to a
    dataset and were left out."""

    frame: pd.DataFrame
    suite: Suite
    missing: list[str] = field(default_factory=list)
    missing_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rows as flat JSON-safe records (as ``results.json`` stores them)."""
        from starft_cli.reports.schema import to_records

        return to_records(self.frame)

    def value(self, dataset: str, metric: str, model: str | None = None, split: str | None = None) -> float:
        """The value of one record: ``metric`` on ``dataset`` (of ``model`` and ``split`` where several are
        measured). Raises :class:`KeyError` unless exactly one record matches."""
        rows = self.frame[(self.frame["dataset"] == dataset) & (self.frame["metric"] == metric)]
        if model is not None:
            rows = rows[rows["model"] == model]
        if split is not None:
            rows = rows[rows["split"] == split]
        if len(rows) != 1:
            raise KeyError(f"{len(rows)} records of {metric} on {dataset} (model {model}, split {split})")
        return float(rows["value"].iloc[0])


def _model_list(models: Any) -> list[Any]:
    """One model (a reference, a parsed :class:`~starft_cli.models.ModelRef` or a loaded model) or several, as a
    list; :class:`UsageError` for none."""
    from starft_cli.models import ModelRef

    single = isinstance(models, str | ModelRef) or not isinstance(models, Sequence)
    model_list = [models] if single else list(models)
    if not model_list:
        raise UsageError("no model to evaluate", "Name one or more in `models`", param="models")
    return model_list


def evaluate_plan(
    models: Sequence[str | ModelRef | LoadedModel] | str | ModelRef | LoadedModel,
    prepared: Plan,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    seed: int = 0,
    progress: ProgressFn | None = None,
    fast_decode: bool = False,
) -> EvalResult:
    """Evaluate one or more models (references or loaded models) on a :class:`Plan` made by :func:`plan` (its
    datasets already checked and loaded, with the plan's templates and class names); one row per (model, dataset,
    metric). Raises :class:`UsageError` without a model."""
    import pandas as pd

    from starft_cli.models import ModelRef, load

    model_list = _model_list(models)
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
    return EvalResult(
        frame=frame,
        suite=prepared.suite,
        missing=list(prepared.missing),
        missing_names=list(prepared.missing_names),
        skipped=skipped,
        notes=list(prepared.notes),
    )


def evaluate(
    models: Sequence[str | ModelRef | LoadedModel] | str | ModelRef | LoadedModel,
    suite: Suite | str | Path,
    data_root: str | Path | None = None,
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
    protocol: str = "reference",
) -> EvalResult:
    """Evaluate one or more models on a suite: :func:`plan` (every dataset under ``data_root`` checked and loaded
    before any model is loaded) then :func:`evaluate_plan`.

    ``suite`` is a built-in name, a TOML file or a :class:`Suite`; for a :class:`Plan` made by :func:`plan`, call
    :func:`evaluate_plan` (a Plan here is a :class:`UsageError`: its data options are fixed already). With
    ``skip_missing`` (default: only for the ``all`` suite) missing datasets are left out and listed in
    ``EvalResult.missing``; otherwise one is a :class:`DataError`. A metric that does not apply to a dataset (see
    :func:`starft_cli.eval.metrics.metric_problem`) raises :class:`UsageError` when its entry is ``explicit`` (named
    by the user), else it is left out and said in ``EvalResult.notes``. ``protocol`` names the class names and
    templates of registered datasets (``reference``, ``clip-benchmark``; :mod:`starft_cli.data.protocols`).
    """
    if isinstance(suite, Plan):
        raise UsageError(
            "evaluate() takes a suite, not a Plan (its data root, templates and class names are fixed already)",
            "Call evaluate_plan(models, plan, ...) for a Plan made by plan()",
        )
    _model_list(models)  # no model is an error before any data is read
    resolved = suite if isinstance(suite, Suite) else get_suite(suite)
    skip = resolved.name == "all" if skip_missing is None else skip_missing
    prepared = plan(resolved, data_root, templates, classnames_file, skip, protocol)
    return evaluate_plan(
        models,
        prepared,
        device=device,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        use_cache=use_cache,
        seed=seed,
        progress=progress,
        fast_decode=fast_decode,
    )
