"""The result schema: flat records, one per (model, dataset, split, metric), stored as strict JSON."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli import runs
from starft_cli.errors import DataError
from starft_cli.paths import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RESULTS_NAME = runs.RESULTS_NAME
REQUIRED = ("model", "dataset", "metric", "value")
# every field a record written by `starft eval` carries, in this order
FIELDS = (
    "model",
    "dataset",
    "split",
    "metric",
    "value",
    "num_samples",
    "num_skipped",
    "num_classes",
    "weights_fingerprint",
    "data_fingerprint",
    "templates",
    "suite",
    "seed",
    "date",
    "starft_version",
    "torch_version",
    "open_clip_version",
    "torchvision_version",
)
KEY = ("model", "dataset", "split", "metric")


def record_key(record: dict[str, Any]) -> tuple[str, ...]:
    """Records with the same key are the same measurement: a re-run replaces it."""
    return tuple(str(record.get(k) or "") for k in KEY)


def _describe(record: dict[str, Any]) -> str:
    """``top1 of model M on D (test)``: which measurement a record is, for messages."""
    split = f" ({record['split']})" if record.get("split") else ""
    return f"{record.get('metric')} of model {record.get('model')} on {record.get('dataset')}{split}"


def is_fraction(metric: str) -> bool:
    """Whether ``metric`` is stored as a fraction in [0, 1] (and shown in % by the leaderboards): a registered
    metric (:data:`~starft_cli.eval.metrics.METRICS`, ECE included) or its per-group detail records. Other names
    (drift in nats, records from elsewhere) are not checked."""
    from starft_cli.eval.metrics import METRICS, detail_metric

    return metric in METRICS or detail_metric(metric) is not None


def validate_record(record: dict[str, Any], source: str = "results") -> dict[str, Any]:
    """``record`` when it has the required fields and a finite value, a fraction metric's within [0, 1];
    :class:`~starft_cli.errors.DataError` naming ``source`` (the file) otherwise. A hand-edited 1.5 for 150% is
    refused, not shown as 150.00."""
    missing = [k for k in REQUIRED if k not in record or record[k] in (None, "")]
    if missing:
        raise DataError(f"{source}: a record lacks {', '.join(missing)}", "Records need model, dataset, metric, value")
    value = record["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise DataError(f"{source}: value of {record_key(record)} is not a finite number ({value!r})")
    if not 0.0 <= float(value) <= 1.0 and is_fraction(str(record["metric"])):
        raise DataError(
            f"{source}: {_describe(record)} is {value!r}, outside [0, 1]",
            "Metrics are stored as fractions (0.615 for 61.5%); correct the record or re-run `starft eval`",
        )
    return record


def _clean(value: Any) -> Any:
    """JSON-safe scalars (numpy and pandas types to Python; NaN/None dropped by the caller)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame -> list of flat records, fields in schema order, missing/NaN fields left out."""
    records = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        ordered = [k for k in FIELDS if k in row] + [k for k in row if k not in FIELDS]
        for key in ordered:
            value = _clean(row[key])
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            clean[key] = value
        records.append(validate_record(clean))
    return records


def merge_records(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every record of the same key replaced by its ``new`` one; new keys appended in order."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in old:
        merged[record_key(record)] = record
    for record in new:
        merged[record_key(record)] = record
    return list(merged.values())


def results_file(path: str | Path) -> Path:
    """``path`` itself, or for a folder its ``results.json`` (``DIR/results.json``, else ``DIR/eval/results.json``);
    :class:`DataError` for a folder that holds neither."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    for candidate in (path / RESULTS_NAME, runs.RunLayout(path).eval_results):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path} holds no {RESULTS_NAME}", "Pass a results.json or a folder written by starft eval")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results file, or of ``DIR/results.json`` / ``DIR/eval/results.json`` for a folder
    (:func:`results_file`)."""
    path = results_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise DataError(f"no such results file: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a strict JSON results file ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path} is not a list of result records")
    return [validate_record(r, str(path)) for r in data]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")


def load_results(paths: Sequence[str | Path] | str | Path) -> pd.DataFrame:
    """Merge result files (or folders holding results.json) into one DataFrame; a later file's record replaces
    an earlier one with the same (model, dataset, split, metric).

    Two records of one key with different values are checked (:func:`check_conflict`): of different weights (both
    fingerprints known and unequal) they are two models under one name, a :class:`DataError` naming both files;
    otherwise (a re-measurement of the same weights, or a fingerprint missing) a warning names both files and the
    later value is kept.
    """
    import pandas as pd

    items = [paths] if isinstance(paths, str | Path) else list(paths)
    records: list[dict[str, Any]] = []
    seen: dict[tuple[str, ...], tuple[Path, dict[str, Any]]] = {}
    for item in items:
        path = results_file(item)
        found = read_records(path)
        for record in found:
            key = record_key(record)
            if key in seen:
                check_conflict(seen[key], (path, record))
            seen[key] = (path, record)
        records = merge_records(records, found)
    return pd.DataFrame.from_records(records)


def check_conflict(earlier: tuple[Path, dict[str, Any]], later: tuple[Path, dict[str, Any]]) -> None:
    """Compare two ``(file, record)`` of one (model, dataset, split, metric) key (see :func:`load_results`).

    Raises:
        DataError: the values differ and so do both records' weights fingerprints (both files named).
    """
    (first_path, first), (second_path, second) = earlier, later
    if first["value"] == second["value"]:
        return
    prints = [r.get("weights_fingerprint") for r in (first, second)]
    where = f"{first_path} and {second_path}" if first_path != second_path else str(first_path)
    values = f"{first['value']!r} vs {second['value']!r}"
    if all(prints) and prints[0] != prints[1]:
        raise DataError(
            f"{where} hold different weights under one name: {_describe(first)} is {values} (weights "
            f"{str(prints[0])[:12]} vs {str(prints[1])[:12]})",
            "Report one of them, or rename the model in one file so that both rows are shown",
        )
    logger.warning("%s both hold %s: %s; the later one (%s) is shown", where, _describe(first), values, second_path)


def write_results_json(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps(records, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
