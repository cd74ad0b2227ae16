"""Benchmark suites: which datasets, splits and metrics; built-in ones and user TOML files."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from starft_cli.errors import ConfigError
from starft_cli.eval.metrics import check_metric_names

ROLES = ("", "id", "ood")  # a suite entry's role: none, in-distribution, or a distribution shift of the "id" one


@dataclass(frozen=True)
class SuiteEntry:
    """One dataset of a suite: ``dataset`` is a registered name, ``folder:PATH`` or ``csv:PATH``."""

    dataset: str
    metrics: tuple[str, ...]
    split: str | None = None
    classnames: str | None = None  # class-names file for folder:/csv: data
    templates: str | None = None  # template set name or file; default: the dataset's own
    # "id" / "ood" in domain-shift suites: leaderboards average the top-1 of the "ood" entries of a built-in suite
    # ("avg OOD top1", when all are present) and plot it against the "id" entry's
    role: str = ""
    # the user named these metrics (--metric, a suite file): one that does not apply is an error; otherwise (built-in
    # suites, the default metrics) it is left out with a note in the report
    explicit: bool = False

    def __post_init__(self) -> None:
        check_metric_names(self.metrics, f"for {self.dataset}")
        if self.role not in ROLES:
            raise ConfigError(f"unknown role '{self.role}' for {self.dataset}", "Use 'id', 'ood' or none")
        if not self.metrics:
            raise ConfigError(f"no metrics for {self.dataset}")


@dataclass(frozen=True)
class Suite:
    """Datasets to evaluate, each (dataset, split) once: :class:`ConfigError` naming a repeated one (its records
    would share one key, and one of them would silently replace the other)."""

    name: str
    entries: tuple[SuiteEntry, ...]
    description: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        repeat = repeated_entry(self.entries)
        if repeat is not None:
            entry = self.entries[repeat[1]]
            split = f" (split {entry.split})" if entry.split else ""
            raise ConfigError(
                f"suite '{self.name}' lists dataset {entry.dataset}{split} twice",
                "List each dataset (and split) once, with all its metrics",
            )


def repeated_entry(entries: Sequence[SuiteEntry]) -> tuple[int, int] | None:
    """``(first, second)`` indices of the first (dataset, split) that ``entries`` list twice, or None."""
    seen: dict[tuple[str, str | None], int] = {}
    for index, entry in enumerate(entries):
        key = (entry.dataset, entry.split)
        if key in seen:
            return seen[key], index
        seen[key] = index
    return None


def _e(dataset: str, *metrics: str, split: str | None = None, role: str = "") -> SuiteEntry:
    return SuiteEntry(dataset=dataset, metrics=metrics, split=split, role=role)


CALIBRATED = ("top1", "top5", "ece")
GROUPED = ("top1", "mean_group_acc", "worst_group_acc", "ece")

BUILTIN_SUITES: dict[str, Suite] = {
    "domain-shift": Suite(
        "domain-shift",
        (
            _e("imagenet", *CALIBRATED, split="val", role="id"),
            _e("imagenet-v2", *CALIBRATED, role="ood"),
            _e("imagenet-r", *CALIBRATED, role="ood"),
            _e("imagenet-a", *CALIBRATED, role="ood"),
            _e("imagenet-sketch", *CALIBRATED, role="ood"),
        ),
        "ImageNet val (ID) and four distribution shifts; avg OOD = mean top-1 over the four shifts. ImageNet-R/A "
        "logits are restricted to the classes whose wnid folders are present.",
    ),
    "group-shift": Suite(
        "group-shift",
        (_e("waterbirds", *GROUPED, "adjusted_avg_acc"), _e("pacs", *GROUPED), _e("cifar10.02", *GROUPED)),
        "Waterbirds (label x place), PACS (domain x class), CIFAR-10.02 (class x source). Average accuracy = "
        "top-1 over all test samples (sample-weighted); adjusted_avg_acc (Waterbirds) = test group accuracies "
        "weighted by the training split's group shares, as group-robustness papers report it; mean_group_acc = "
        "unweighted mean of the group accuracies; worst_group_acc = the lowest group accuracy.",
    ),
    "zero-shot": Suite(
        "zero-shot",
        (
            _e("cifar10", *CALIBRATED),
            _e("cifar100", *CALIBRATED),
            _e("caltech101", *CALIBRATED),
            _e("stl10", *CALIBRATED),
        ),
        "Zero-shot classification, top-1 (also top-5 and ECE).",
    ),
    "transfer": Suite(
        "transfer",
        (
            _e("caltech101", "top1", "mean_per_class_recall"),
            _e("stanford-cars", "top1", "mean_per_class_recall"),
            _e("flowers102", "top1", "mean_per_class_recall"),
            _e("imagenet", "top1", "top5", split="val"),
            _e("iwildcam", "macro_f1", "top1"),
            _e("fmow", "worst_region_acc", "top1"),
        ),
        "Transfer targets: top-1; iWildCam macro-F1; FMoW worst-region accuracy.",
    ),
}


def _merge_all() -> Suite:
    merged: dict[tuple[str, str | None], SuiteEntry] = {}
    for suite in BUILTIN_SUITES.values():
        for entry in suite.entries:
            key = (entry.dataset, entry.split)
            if key in merged:
                old = merged[key]
                metrics = old.metrics + tuple(m for m in entry.metrics if m not in old.metrics)
                merged[key] = SuiteEntry(entry.dataset, metrics, entry.split, role=old.role or entry.role)
            else:
                merged[key] = entry
    return Suite("all", tuple(merged.values()), "Every built-in suite; datasets that are not present are skipped.")


@dataclass(frozen=True)
class Shift:
    """A built-in suite's in-distribution dataset (its "id" entry) and its distribution shifts ("ood" entries)."""

    suite: str
    id: str | None
    ood: tuple[str, ...]


def shifts() -> list[Shift]:
    """Every built-in suite that has "ood" entries, as a :class:`Shift` (the leaderboard's ``avg OOD top1``)."""
    out = []
    for suite in BUILTIN_SUITES.values():
        ood = tuple(e.dataset for e in suite.entries if e.role == "ood")
        if ood:
            first_id = next((e.dataset for e in suite.entries if e.role == "id"), None)
            out.append(Shift(suite.name, first_id, ood))
    return out


def suite_names() -> list[str]:
    return [*BUILTIN_SUITES, "all"]


def get_suite(name_or_file: str | Path) -> Suite:
    """A built-in suite by name, or a user suite from a TOML file."""
    text = str(name_or_file)
    if text == "all":
        return _merge_all()
    if text in BUILTIN_SUITES:
        return BUILTIN_SUITES[text]
    if text.startswith("paper:"):  # a shipped paper recipe (configs/paper/eval-*.toml)
        from starft_cli.train.recipes import resolve_config_path

        return load_suite_file(resolve_config_path(text, kind="eval"))
    path = Path(text).expanduser()
    if path.suffix.lower() == ".toml" or path.is_file():
        return load_suite_file(path)
    from starft_cli.suggest import did_you_mean

    use = f"Use one of {', '.join(suite_names())} or a TOML file"
    raise ConfigError(f"unknown suite '{text}'", did_you_mean(text, suite_names(), then=use, cutoff=0.5))


def load_suite_file(path: Path) -> Suite:
    """A suite file::

    name = "my-suite"
    [[datasets]]
    name = "waterbirds"                 # registered name, folder:PATH or csv:PATH
    metrics = ["top1", "worst_group_acc"]
    split = "test"                      # optional
    classnames = "names.txt"            # optional, for folder:/csv: (relative to the suite file)
    templates = "waterbirds"            # optional: template set name or file
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no such suite file: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read suite file {path} ({exc})") from exc
    items = data.get("datasets")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path} has no [[datasets]] tables", "Add [[datasets]] with name = ... and metrics = [...]")
    entries = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{path}: dataset #{number} has no name")
        unknown = sorted(set(item) - {"name", "metrics", "split", "classnames", "templates"})
        if unknown:
            raise ConfigError(f"{path}: dataset #{number} has unknown key(s) {', '.join(unknown)}")
        metrics = item.get("metrics", ["top1"])
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"{path}: metrics of {item['name']} must be a list of names")
        check_metric_names(metrics, f"for {item['name']} in {path}")

        def rel(value: object) -> str | None:
            if value is None:
                return None
            candidate = path.parent / str(value)
            return str(candidate) if candidate.exists() else str(value)

        name = item["name"]
        for prefix in ("folder:", "csv:"):
            if name.startswith(prefix) and not Path(name[len(prefix) :]).is_absolute():
                name = prefix + str(path.parent / name[len(prefix) :])
        entries.append(
            SuiteEntry(
                dataset=name,
                metrics=tuple(metrics),
                split=item.get("split"),
                classnames=rel(item.get("classnames")),
                templates=rel(item.get("templates")),
                explicit="metrics" in item,
            )
        )
    repeat = repeated_entry(entries)
    if repeat is not None:
        first, second = repeat
        split = f" (split {entries[second].split})" if entries[second].split else ""
        raise ConfigError(
            f"{path}: dataset {items[second]['name']}{split} is listed twice (#{first + 1} and #{second + 1})",
            "List each dataset once, with all its metrics in one [[datasets]] table; a second split needs its own "
            "`split`",
        )
    return Suite(str(data.get("name") or path.stem), tuple(entries), str(data.get("description", "")))
