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
from starft_cli.eval.suites import GROUP_METRICS, Suite, SuiteEntry, get_suite

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from starft_cli.models import LoadedModel

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PreparedDataset:
    entry: SuiteEntry
    dataset: Any  # ImageDataset
    split: str
    templates: list[str]
    templates_name: str


@dataclass
class Plan:
    """What an evaluation will run (datasets checked and loaded) and what is missing."""

    suite: Suite
    datasets: list[PreparedDataset] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # one line per missing dataset: what, where, how
    missing_short: list[str] = field(default_factory=list)  # the same, as "name (problem)"


def _add_missing(plan: Plan, entry: SuiteEntry, data_root: str | Path | None, problem: str) -> None:
    plan.missing.append(_missing_line(entry, data_root, problem))
    plan.missing_short.append(f"{entry.dataset} ({problem})")


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
                raise UsageError(f"dataset '{entry.dataset}' needs --data-root", "Point it at the folder holding them")
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
        result.datasets.append(PreparedDataset(entry, ds, split, load_templates(name), Path(str(name)).name))
    if result.missing and not skip_missing:
        raise DataError(
            f"{len(result.missing)} dataset(s) of suite '{suite.name}' are missing or broken: "
            + "; ".join(result.missing_short),
            "`starft data check NAME --data-root DIR` shows each one's layout and source; `--skip-missing` (or "
            "`--suite all`) runs the datasets that are present",
        )
    if not result.datasets:
        raise DataError(
            f"no dataset of suite '{suite.name}' is present under {data_root}",
            "`starft data list` shows where each should be and `starft data check NAME --data-root DIR` what is "
            "wrong with one",
        )
    return result


def _metric_values(
    entry: SuiteEntry, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, group_names: list[str]
) -> list[tuple[str, float]]:
    preds = np.argmax(logits, axis=1)
    out: list[tuple[str, float | None]] = []
    for name in entry.metrics:
        if name in GROUP_METRICS and groups is None:
            logger.info("%s has no groups: %s left out", entry.dataset, name)
            continue
        if name == "top1":
            out.append((name, M.top_k_accuracy(logits, labels, 1)))
        elif name == "top5":
            out.append((name, M.top_k_accuracy(logits, labels, 5)))
        elif name == "mean_per_class_recall":
            out.append((name, M.mean_per_class_recall(preds, labels)))
        elif name == "macro_f1":
            out.append((name, M.macro_f1(preds, labels)))
        elif name == "ece":
            out.append((name, M.expected_calibration_error(logits, labels)))
        elif name in ("mean_group_acc", "worst_group_acc", "worst_region_acc"):
            assert groups is not None
            accs = M.group_accuracies(preds, labels, groups)
            if name == "mean_group_acc":
                out.append((name, M.mean_group_accuracy(preds, labels, groups)))
            elif name == "worst_region_acc":
                other = [g for g, n in enumerate(group_names) if n == "Other"]  # left out, as WILDS does
                out.append((name, M.worst_region_accuracy(preds, labels, groups, ignore=other)))
                out.extend((f"region_acc[{group_names[g]}]", acc) for g, acc in accs.items())
            else:
                out.append((name, M.worst_group_accuracy(preds, labels, groups)))
                out.extend((f"group_acc[{group_names[g]}]", acc) for g, acc in accs.items())
    return [(n, float(v)) for n, v in out if v is not None]


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
        for metric, value in _metric_values(item.entry, logits, labels, groups, ds.group_names or []):
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
    models: Sequence[str | LoadedModel] | str,
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
    """Evaluate one or more models on a suite; one row per (model, dataset, metric).

    ``suite`` is a built-in name, a TOML file, a :class:`Suite`, or a :class:`Plan` made by :func:`plan`.
    Every dataset is checked before any model is loaded. With ``skip_missing`` (default: only for the ``all``
    suite) missing datasets are left out and listed in ``df.attrs["missing"]``; ``df.attrs["skipped"]`` lists
    unreadable images that were skipped.
    """
    import pandas as pd

    from starft_cli.models import load

    model_list = [models] if isinstance(models, str) else list(models)
    if not model_list:
        raise UsageError("no model to evaluate", "Pass --model REF (repeatable)")
    if isinstance(suite, Plan):
        prepared, resolved = suite, suite.suite
    else:
        resolved = suite if isinstance(suite, Suite) else get_suite(suite)
        skip = resolved.name == "all" if skip_missing is None else skip_missing
        prepared = plan(resolved, data_root, templates, classnames_file, skip)
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    for model in model_list:
        loaded = load(model, device=device) if isinstance(model, str) else model
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
    frame = pd.DataFrame.from_records(records)
    frame.attrs["missing"] = list(prepared.missing)
    frame.attrs["skipped"] = skipped
    frame.attrs["suite"] = resolved.name
    frame.attrs["description"] = resolved.description
    return frame
