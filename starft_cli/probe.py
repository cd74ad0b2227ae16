"""Spurious drift: StarReg measured on held-out data, between a model and its zero-shot reference.

For one dataset split and one spurious pool, the probe asks how far a (fine-tuned) model's view of spurious
descriptions has moved from the reference's (the zero-shot model it started from). It is the StarFT regulariser
(METHOD.md, StarReg) evaluated on held-out images, with the same formula
(:func:`starft_cli.losses.star_regularizer_rows`), masking and temperature:

* **batches**: the readable images of the split are shuffled with ``torch.Generator().manual_seed(seed)``
  (``torch.randperm``) and cut into ``ceil(N / reg_batch_size)`` consecutive batches of near-equal size (sizes
  differ by at most one, so no tiny last batch); every image belongs to exactly one batch;
* **spurious text of a sample**: a template drawn uniformly from the pool per sample with the same generator
  (``torch.randint`` after the permutation), filled with the class caption without its final period (``a photo of
  a {}.`` by default), exactly as training does (:func:`starft_cli.train.bank.spurious_text`);
* **row of image i**: ``T_ij = tau0 <f0(x_i), g0(s_j)>`` (reference) and ``S_ij = tau0 <f(x_i), g(s_j)>`` (model)
  over the samples ``j`` of its batch, same-class pairs (the diagonal included) masked, ``tau0`` = the reference's
  ``exp(logit_scale)``; its value is ``KL(softmax(T_i) || softmax(S_i))`` in nats, 0 when every column is masked;
* **drift** = the mean of the row values over all images. This is the size-weighted mean of the regulariser's
  ``batchmean`` values of the batches: the regulariser's value on held-out data, deterministic for a seed. It is 0
  for a model against itself and for a one-class split.

The confidence interval is a percentile bootstrap over images (``numpy.random.default_rng(seed)``, resampling the
row values; the batches are kept fixed, so it reflects the choice of images, not of batches). Per class and per
group (where the dataset has groups) the drift is the mean row value of the images of that class or group.

Image features come from the evaluation's feature cache (:func:`starft_cli.eval.features.compute_features`, so
they are not recomputed when cached); the text features of every (class, template) of each side come from the
spurious-text bank cache (:func:`starft_cli.train.bank.cached_bank`), keyed by each model's identity.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from starft_cli.errors import ConfigError, DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from starft_cli.models import LoadedModel, ModelRef

logger = logging.getLogger(__name__)

METRIC = "spurious_drift"
CLASS_METRIC = "class_drift"
GROUP_METRIC = "group_drift"
DEFAULT_POOL = "background"
DEFAULT_REG_BATCH = 256  # the paper's batch outside ImageNet
DEFAULT_BOOTSTRAP = 1000
CI_LEVEL = 0.95
ProgressFn = Callable[[str, int, int], None]


def drift_metric(pool: str) -> str:
    """The record metric of a pool's drift: ``spurious_drift[<pool>]``."""
    return f"{METRIC}[{pool}]"


def is_drift_metric(metric: str) -> bool:
    """Whether ``metric`` is a headline drift metric (``spurious_drift[<pool>]``, not a per-class/group one)."""
    return metric.startswith(f"{METRIC}[") and metric.endswith("]") and metric.count("[") == 1


def pool_label(name_or_file: str) -> str:
    """The name a pool is reported under: a shipped pool's name, or a pool file's name without its suffix."""
    from starft_cli.prompts import pool_names

    text = str(name_or_file)
    return text if text in pool_names() else Path(text).stem


def load_pools(specs: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """``(label, templates)`` of every pool asked for (default: ``background``); two pools with one label raise
    :class:`~starft_cli.errors.UsageError`, an unknown or bad pool :class:`~starft_cli.errors.TemplateError`."""
    from starft_cli.prompts import load_pool

    out: list[tuple[str, list[str]]] = []
    for spec in specs or [DEFAULT_POOL]:
        label = pool_label(spec)
        if any(label == seen for seen, _ in out):
            raise UsageError(f"two pools are named '{label}'", "Pass each pool once (rename one of the files)")
        out.append((label, load_pool(spec)))
    return out


def check_caption_template(template: str) -> str:
    if template.count("{}") != 1:
        raise ConfigError(
            f"caption template '{template}' must have exactly one {{}} slot",
            'Write `caption_template` with one, e.g. "a photo of a {}."',
            param="caption_template",
        )
    return template


# ---------------------------------------------------------------------------------------------------------
# the computation


def probe_batches(n: int, reg_batch_size: int, pool_size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The held-out "batches" (index arrays into ``0..n-1``, near-equal sizes) and each sample's template index
    ``[n]``, deterministic for ``seed`` (see the module docstring)."""
    import torch

    if reg_batch_size < 1:
        raise ConfigError(f"the regulariser batch size must be >= 1 (got {reg_batch_size})")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    templates = torch.randint(pool_size, (n,), generator=gen)
    count = max(1, math.ceil(n / reg_batch_size)) if n else 0
    batches = [b.numpy() for b in torch.tensor_split(perm, count)] if count else []
    return batches, templates.numpy()


def drift_rows(
    reference_images: torch.Tensor,
    reference_text: torch.Tensor,
    model_images: torch.Tensor,
    model_text: torch.Tensor,
    labels: np.ndarray,
    templates: np.ndarray,
    batches: Sequence[np.ndarray],
    scale: float,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Each image's StarReg row value (float64 ``[N]``, nats).

    ``reference_images [N, d0]`` / ``model_images [N, d]``: L2-normalised image features; ``reference_text
    [C, K, d0]`` / ``model_text [C, K, d]``: spurious-text features of (class, template); ``labels [N]`` index
    ``C``; ``templates [N]`` index ``K``; ``batches``: index arrays partitioning ``0..N-1``; ``scale`` = tau0.
    """
    import torch

    out = np.zeros(len(labels), dtype=np.float64)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    k_all = torch.as_tensor(templates, dtype=torch.long)
    ref_text = reference_text.to(device)
    mod_text = model_text.to(device)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # blocks of reg_batch_size^2 entries are small: on CPU, thread hand-offs cost more than the arithmetic
        # (tens of times more on a loaded machine), so one thread computes them
        torch.set_num_threads(1)
    try:
        _fill_rows(out, batches, y_all, k_all, reference_images, ref_text, model_images, mod_text, scale, device)
    finally:
        torch.set_num_threads(threads)
    return out


def _fill_rows(
    out: np.ndarray,
    batches: Sequence[np.ndarray],
    y_all: torch.Tensor,
    k_all: torch.Tensor,
    reference_images: torch.Tensor,
    ref_text: torch.Tensor,
    model_images: torch.Tensor,
    mod_text: torch.Tensor,
    scale: float,
    device: str | torch.device,
) -> None:
    import torch

    from starft_cli.losses import star_regularizer_rows

    with torch.no_grad():
        for batch in batches:
            if len(batch) == 0:
                continue
            idx = torch.as_tensor(batch, dtype=torch.long)
            y, k = y_all[idx].to(device), k_all[idx].to(device)
            rows = star_regularizer_rows(
                reference_images[idx].to(device),
                ref_text[y, k],
                model_images[idx].to(device),
                mod_text[y, k],
                scale,
                y,
                masked=True,
            )
            out[batch] = rows.double().cpu().numpy()


def bootstrap_ci(
    values: np.ndarray, seed: int, resamples: int = DEFAULT_BOOTSTRAP, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` over ``resamples`` resamples (seeded); a single
    value (or none) gives the value itself."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    if n == 1 or resamples < 1:
        mean = float(values.mean())
        return mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass
class PoolDrift:
    """One pool's drift of one model: the mean (nats), its bootstrap interval, per class / group means and the row
    values ``rows [N]`` of the readable images (in dataset order)."""

    pool: str
    value: float
    ci_low: float
    ci_high: float
    per_class: dict[str, float]
    per_group: dict[str, float] | None
    rows: np.ndarray


@dataclass
class Side:
    """One model's inputs to the probe: image features ``[N_all, d]`` (all samples, readable or not), the valid
    mask ``[N_all]`` and, per pool label, text features ``[C, K, d]`` of the present classes."""

    loaded: Any
    images: Any
    valid: Any
    num_skipped: int
    text: dict[str, Any] = field(default_factory=dict)


def _side(
    loaded: LoadedModel,
    dataset: Any,
    data_fingerprint: str,
    classnames: list[str],
    pools: Sequence[tuple[str, list[str]]],
    caption_template: str,
    device: str | torch.device,
    batch_size: int,
    workers: int,
    strict: bool,
    use_cache: bool,
    progress: ProgressFn | None,
) -> Side:
    import torch

    from starft_cli.eval.features import compute_features
    from starft_cli.train.bank import cached_bank

    report = None if progress is None else (lambda done, total: progress(loaded.ref.raw, done, total))
    feats = compute_features(
        loaded,
        dataset,
        device=device,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        use_cache=use_cache,
        progress=report,
        data_fingerprint=data_fingerprint,
    )
    side = Side(loaded, feats.features, feats.valid, len(feats.skipped))
    device = torch.device(device)
    for label, templates in pools:
        model, tokenizer, fingerprint = loaded.model, loaded.tokenizer, loaded.fingerprint
        bank = cached_bank(model, tokenizer, fingerprint, classnames, caption_template, templates, device, use_cache)
        side.text[label] = bank.spurious.float().cpu()
    return side


def _means(values: np.ndarray, keys: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {str(names[k]) if 0 <= k < len(names) else str(k): float(values[keys == k].mean()) for k in np.unique(keys)}


def compare(
    model: Side,
    reference: Side,
    dataset: Any,
    pools: Sequence[tuple[str, list[str]]],
    present: list[int],
    *,
    seed: int,
    reg_batch_size: int,
    bootstrap: int,
    device: str | torch.device,
) -> tuple[list[PoolDrift], int]:
    """The drift of ``model`` from ``reference`` for every pool, and the number of images it is over (readable
    under both models)."""
    valid = (model.valid & reference.valid).numpy()
    index = np.flatnonzero(valid)
    labels_all = np.asarray(dataset.labels)
    position = np.full(max(present) + 1, -1, dtype=np.int64)
    position[present] = np.arange(len(present))
    labels = position[labels_all[index]]
    scale = float(reference.loaded.model.logit_scale.exp().item())
    groups = None if dataset.groups is None else np.asarray(dataset.groups)[index]
    out = []
    for label, templates in pools:
        batches, drawn = probe_batches(len(index), reg_batch_size, len(templates), seed)
        rows = drift_rows(
            reference.images[index],
            reference.text[label],
            model.images[index],
            model.text[label],
            labels,
            drawn,
            batches,
            scale,
            device,
        )
        low, high = bootstrap_ci(rows, seed, bootstrap)
        class_names = [dataset.classnames[c] for c in present]
        out.append(
            PoolDrift(
                pool=label,
                value=float(rows.mean()) if len(rows) else 0.0,
                ci_low=low,
                ci_high=high,
                per_class=_means(rows, labels, class_names),
                per_group=None if groups is None else _means(rows, groups, list(dataset.group_names or [])),
                rows=rows,
            )
        )
    return out, len(index)


# ---------------------------------------------------------------------------------------------------------
# records


def _records(
    model: LoadedModel,
    reference: LoadedModel,
    drifts: list[PoolDrift],
    base: dict[str, Any],
) -> list[dict[str, Any]]:
    records = []
    common = {
        **base,
        "model": model.ref.raw,
        "weights_fingerprint": model.fingerprint,
        "reference": reference.ref.raw,
        "reference_fingerprint": reference.fingerprint,
    }
    for d in drifts:
        records.append(
            {
                **common,
                "metric": drift_metric(d.pool),
                "value": round(d.value, 6),
                "pool": d.pool,
                "ci_low": round(d.ci_low, 6),
                "ci_high": round(d.ci_high, 6),
            }
        )
        for name, value in d.per_class.items():
            records.append({**common, "metric": f"{CLASS_METRIC}[{d.pool}:{name}]", "value": round(value, 6)})
        for name, value in (d.per_group or {}).items():
            records.append({**common, "metric": f"{GROUP_METRIC}[{d.pool}:{name}]", "value": round(value, 6)})
    return records


def probe(
    models: Sequence[str | ModelRef | LoadedModel] | str | ModelRef | LoadedModel,
    reference: str | ModelRef | LoadedModel,
    data: str | Any,
    data_root: str | Path | None = None,
    split: str | None = None,
    pools: Sequence[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    reg_batch_size: int = DEFAULT_REG_BATCH,
    caption_template: str | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    classnames_file: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """The spurious drift of each model from ``reference`` on a dataset split: one record per (model, pool) with
    metric ``spurious_drift[<pool>]`` (value in nats; ``ci_low``/``ci_high`` the bootstrap interval), plus
    ``class_drift[<pool>:<class>]`` and, where the dataset has groups, ``group_drift[<pool>:<group>]`` records.

    ``data`` is a dataset reference (registered name, ``folder:PATH``, ``csv:PATH``) or a loaded ImageDataset;
    ``pools`` shipped pool names or files (default ``background``). Raises :class:`UsageError` for no model or bad
    options, :class:`~starft_cli.errors.DataError` when the split holds no readable image, and whatever loading the
    models, pools and data raises.
    """
    import pandas as pd

    from starft_cli.eval.runner import versions
    from starft_cli.models import ModelRef, load
    from starft_cli.reports.schema import FIELDS
    from starft_cli.train.config import DEFAULT_CAPTION

    model_list = list(models) if isinstance(models, list | tuple) else [models]
    if not model_list:
        raise UsageError("no model to probe", "Name one or more in `models`", param="models")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0 (got {bootstrap})")
    if reg_batch_size < 1:
        raise ConfigError(f"the regulariser batch size must be >= 1 (got {reg_batch_size})")
    caption = check_caption_template(caption_template or DEFAULT_CAPTION)
    pool_list = load_pools(pools)
    if isinstance(data, str):
        from starft_cli.data.registry import load_dataset

        dataset = load_dataset(data, data_root, split, classnames_file=classnames_file)
        data_name = data
        split_name = dataset.split or _default_split(data)  # the split the data layer chose (split folders)
    else:
        dataset, data_name, split_name = data, data.name, split or "test"
    if len(dataset) == 0:
        raise DataError(f"{data_name}: the '{split_name}' split holds no images")
    data_fingerprint = dataset.fingerprint()
    present = sorted(set(dataset.labels))
    classnames = [dataset.classnames[c] for c in present]
    if len(present) < 2:  # StarReg masks the sample's own class: with one class nothing is left, drift is 0
        raise UsageError(
            f"{data_name} ('{split_name}' split) has one class ({classnames[0]}): the drift over other-class "
            "descriptions would be 0 for every model",
            "Probe on data with at least two classes",
        )
    args = (dataset, data_fingerprint, classnames, pool_list, caption, device, batch_size, workers, strict, use_cache)
    ref_loaded = load(reference, device=device) if isinstance(reference, str | ModelRef) else reference
    ref_side = _side(ref_loaded, *args, progress)
    date = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    info = {f"{k}_version": v for k, v in versions().items()}
    records: list[dict[str, Any]] = []
    for model in model_list:
        if not isinstance(model, str | ModelRef):
            loaded = model
        elif _same_ref(model, reference):
            loaded = ref_loaded
        else:
            loaded = load(model, device=device)
        side = ref_side if loaded is ref_loaded else _side(loaded, *args, progress)
        drifts, count = compare(
            side,
            ref_side,
            dataset,
            pool_list,
            present,
            seed=seed,
            reg_batch_size=reg_batch_size,
            bootstrap=bootstrap,
            device=device,
        )
        if count == 0:
            raise DataError(f"{data_name}: no image of the '{split_name}' split is readable", "Check the image files")
        base = {
            "dataset": data_name,
            "split": split_name,
            "num_samples": count,
            "num_skipped": len(dataset) - count,
            "num_classes": len(present),
            "data_fingerprint": data_fingerprint,
            "suite": "probe",
            "seed": seed,
            "date": date,
            **info,
            "caption_template": caption,
            "reg_batch_size": reg_batch_size,
            "bootstrap": bootstrap,
            "ci_level": CI_LEVEL,
        }
        records.extend(_records(loaded, ref_loaded, drifts, base))
    columns = list(FIELDS) if not records else None
    return pd.DataFrame.from_records(records, columns=columns)


def _same_ref(a: str | ModelRef, b: Any) -> bool:
    """Whether two model references (strings or parsed) are written the same (then the model is loaded once)."""
    from starft_cli.models import ModelRef

    def raw(x: Any) -> Any:
        return x.raw if isinstance(x, ModelRef) else x

    return raw(a) == raw(b)


def _default_split(ref: str) -> str:
    if ref.startswith(("folder:", "csv:")):
        return "test"
    from starft_cli.data.registry import get_builder

    return get_builder(ref).info.default_split
