"""The result schema: flat records, one per (model, dataset, split, metric), stored as strict JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli import runs
from starft_cli.errors import DataError
from starft_cli.paths import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

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


def validate_record(record: dict[str, Any], source: str = "results") -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in record or record[k] in (None, "")]
    if missing:
        raise DataError(f"{source}: a record lacks {', '.join(missing)}", "Records need model, dataset, metric, value")
    value = record["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise DataError(f"{source}: value of {record_key(record)} is not a finite number ({value!r})")
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


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results file, or of ``DIR/results.json`` / ``DIR/eval/results.json`` for a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / RESULTS_NAME, runs.RunLayout(path).eval_results):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise DataError(f"{path} holds no {RESULTS_NAME}", "Pass a results.json or a folder written by starft eval")
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
    an earlier one with the same (model, dataset, split, metric)."""
    import pandas as pd

    items = [paths] if isinstance(paths, str | Path) else list(paths)
    records: list[dict[str, Any]] = []
    for path in items:
        records = merge_records(records, read_records(path))
    return pd.DataFrame.from_records(records)


def write_results_json(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps(records, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
