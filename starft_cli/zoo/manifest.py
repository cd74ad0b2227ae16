"""The zoo manifest: schema, validation, and the merge of the shipped, user and ``STARFT_ZOO`` manifests.

A manifest is a TOML file::

    schema = 1

    [models.vit-b-16-laion400m-e31]
    arch = "ViT-B-16"                       # an open_clip architecture
    source = "open_clip:laion400m_e31"      # or "hf-hub:ORG/NAME[/FILE.safetensors]@COMMIT", or "https://..."
    sha256 = "..."                          # required for hf-hub and https sources
    kind = "zero-shot"                      # zero-shot | starft | baseline
    license = "MIT"
    training_data = "LAION-400M"
    quick_gelu = false                      # only where it differs from the architecture default
    preprocess = { mean = [0.5, 0.5, 0.5] } # open_clip preprocess_cfg overrides
    override = false                        # a user entry that replaces a shipped one must say so

    [[models.vit-b-16-laion400m-e31.metrics]]
    suite = "zero-shot"
    dataset = "imagenet"
    metric = "top1"
    value = 0.0
    source = "where the number comes from, precisely"

Nothing here imports torch. Validation errors are ``ZooError`` naming the file, the entry and the field.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from starft_cli.errors import ZooError
from starft_cli.paths import atomic_write_text, config_dir
from starft_cli.runs import WEIGHTS_NAME
from starft_cli.zoo.recipes import RECIPES

SCHEMA_VERSION = 1
# RECIPES: models starft builds on this machine instead of downloading (no sha256 in the manifest: the build
# records its own, and every use verifies it); see starft_cli/zoo/recipes.py.


class ZooKind(StrEnum):
    """What a zoo model is (a manifest entry's ``kind``; ``starft zoo list|add --kind``)."""

    zero_shot = "zero-shot"
    starft = "starft"
    baseline = "baseline"


KINDS = tuple(kind.value for kind in ZooKind)
DEFAULT_HF_FILENAME = WEIGHTS_NAME  # what `starft zoo publish` uploads
USER_MANIFEST_NAME = "zoo.toml"
ENV_VAR = "STARFT_ZOO"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_ENTRY_KEYS = {
    "arch",
    "source",
    "sha256",
    "kind",
    "license",
    "training_data",
    "description",
    "quick_gelu",
    "preprocess",
    "metrics",
    "override",
}
_METRIC_KEYS = ("suite", "dataset", "metric", "value", "source")
# open_clip's PreprocessCfg fields and the value type each takes.
_PREPROCESS_KEYS: dict[str, str] = {
    "size": "size",
    "mode": "str",
    "mean": "triple",
    "std": "triple",
    "interpolation": "str",
    "resize_mode": "str",
    "fill_color": "int",
}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where an entry's weights come from. ``kind`` is ``open_clip``, ``hf-hub`` or ``url``."""

    kind: str  # open_clip, hf-hub, url, or recipe (a model starft builds locally, e.g. the demo's)
    tag: str | None = None
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None

    def __str__(self) -> str:
        if self.kind == "open_clip":
            return f"open_clip:{self.tag}"
        if self.kind == "recipe":
            return f"recipe:{self.tag}"
        if self.kind == "hf-hub":
            file_part = "" if self.filename == DEFAULT_HF_FILENAME else f"/{self.filename}"
            return f"hf-hub:{self.repo}{file_part}@{self.revision}"
        return str(self.url)


@dataclass(frozen=True)
class Metric:
    """A reported metric, with where it was reported."""

    suite: str
    dataset: str
    metric: str
    value: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _METRIC_KEYS}


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo. ``origin`` says which manifest it came from (shipped, user, STARFT_ZOO)."""

    name: str
    arch: str
    source: Source
    kind: str
    license: str
    sha256: str | None = None
    training_data: str | None = None
    description: str | None = None
    quick_gelu: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()
    override: bool = False
    origin: str = "shipped"
    manifest: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (what ``starft zoo list --format json`` prints)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "source": str(self.source),
            "sha256": self.sha256,
            "kind": self.kind,
            "license": self.license,
            "training_data": self.training_data,
            "description": self.description,
            "quick_gelu": self.quick_gelu,
            "preprocess": dict(self.preprocess),
            "metrics": [m.to_dict() for m in self.metrics],
            "origin": self.origin,
            "manifest": str(self.manifest) if self.manifest else None,
        }

    def to_toml_fields(self) -> dict[str, Any]:
        """The fields a manifest stores for this entry (defaults left out)."""
        data: dict[str, Any] = {"arch": self.arch, "source": str(self.source)}
        if self.sha256:
            data["sha256"] = self.sha256
        data["kind"] = self.kind
        data["license"] = self.license
        for key in ("training_data", "description"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.quick_gelu:
            data["quick_gelu"] = True
        if self.preprocess:
            data["preprocess"] = dict(self.preprocess)
        if self.override:
            data["override"] = True
        if self.metrics:
            data["metrics"] = [m.to_dict() for m in self.metrics]
        return data


@dataclass(frozen=True)
class BrokenEntry:
    """A manifest entry that fails validation (a hand edit without ``kind``, a shadowing name, ...): kept aside with
    its ``problem`` so that ``zoo info``/``verify`` show it and ``zoo rm NAME --forget`` removes it, while every
    other entry works."""

    name: str
    origin: str
    manifest: Path | None
    problem: str

    def error(self) -> ZooError:
        """The error a use of this entry raises: its problem and how to fix it."""
        where = self.manifest or self.origin
        fix = (
            f"Fix the entry in {where}, or remove it with `starft zoo rm {self.name} --forget`"
            if self.origin == "user"
            else f"Fix or remove the entry in {where}"
        )
        return ZooError(f"zoo entry '{self.name}' is broken: {self.problem.rstrip('.')}", fix)


# ----------------------------------------------------------------------------------------------
# Parsing and validation
# ----------------------------------------------------------------------------------------------


def parse_source(text: str, *, where: str = "source") -> Source:
    """Parse ``open_clip:TAG``, ``hf-hub:ORG/NAME[/FILE]@REVISION`` or an ``https://`` URL."""
    text = text.strip()
    if text.startswith("open_clip:"):
        tag = text[len("open_clip:") :]
        if not _TAG_RE.match(tag):
            raise ZooError(
                f"{where}: malformed open_clip tag '{tag}'", "Use open_clip:TAG, e.g. open_clip:laion400m_e31"
            )
        return Source(kind="open_clip", tag=tag)
    if text.startswith("recipe:"):
        name = text[len("recipe:") :]
        if name not in RECIPES:
            raise ZooError(
                f"{where}: unknown recipe '{name}'",
                f"Locally built models: {', '.join(f'recipe:{r}' for r in RECIPES)}",
            )
        return Source(kind="recipe", tag=name)
    if text.startswith("hf-hub:"):
        body = text[len("hf-hub:") :]
        path_part, at, revision = body.partition("@")
        if not at or not revision:
            raise ZooError(
                f"{where}: Hub source '{text}' has no pinned revision",
                "Pin a commit: hf-hub:ORG/NAME@<40-hex commit> (`starft zoo publish` prints it)",
            )
        if not _COMMIT_RE.match(revision):
            raise ZooError(
                f"{where}: revision '{revision}' is not a full commit hash",
                "Pin the 40-character commit hash, not a branch or tag, so the weights cannot change under you",
            )
        parts = path_part.split("/")
        if len(parts) < 2 or not all(_REPO_PART_RE.match(p) for p in parts[:2]):
            raise ZooError(f"{where}: malformed Hub repo in '{text}'", "Use hf-hub:ORG/NAME@COMMIT")
        repo = "/".join(parts[:2])
        filename = "/".join(parts[2:]) or DEFAULT_HF_FILENAME
        check_filename(filename, where=where)
        return Source(kind="hf-hub", repo=repo, filename=filename, revision=revision)
    lowered = text.lower()
    if lowered.startswith("https://"):
        rest = text[len("https://") :]
        host, _, path = rest.partition("/")
        if not host or not path or any(c.isspace() for c in text):
            raise ZooError(f"{where}: malformed URL '{text}'")
        filename = path.split("?")[0].split("#")[0].rsplit("/", 1)[-1]
        check_filename(filename, where=where)
        return Source(kind="url", url=text, filename=filename)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ZooError(
            f"{where}: URL scheme '{scheme}' is not allowed ('{text}')", "Zoo weights are fetched over https only"
        )
    raise ZooError(
        f"{where}: unknown source '{text}'",
        "Use open_clip:TAG, hf-hub:ORG/NAME[/FILE.safetensors]@COMMIT or an https:// URL",
    )


def check_filename(filename: str, *, where: str = "filename") -> str:
    """Reject absolute paths, ``..``, backslashes and anything but a ``.safetensors`` file."""
    parts = filename.split("/")
    if (
        not filename
        or filename.startswith("/")
        or "\\" in filename
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", filename)
        or any(ord(c) < 32 for c in filename)
    ):
        raise ZooError(f"{where}: unsafe file name '{filename}'", "Use a plain relative path inside the repository")
    if not filename.lower().endswith(".safetensors"):
        raise ZooError(
            f"{where}: '{filename}' is not a .safetensors file", "Zoo weights load only from safetensors files"
        )
    return filename


def _need_str(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ZooError(f"{where}: missing '{key}'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ZooError(f"{where}: '{key}' must be a non-empty string")
    return value.strip()


def _check_preprocess(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ZooError(f"{where}: 'preprocess' must be a table")
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = _PREPROCESS_KEYS.get(key)
        if kind is None:
            raise ZooError(f"{where}: unknown preprocess key '{key}'", f"Known keys: {', '.join(_PREPROCESS_KEYS)}")
        number = (int, float)
        ok = (
            (kind == "str" and isinstance(item, str))
            or (kind == "int" and isinstance(item, int) and not isinstance(item, bool))
            or (
                kind == "triple"
                and isinstance(item, list)
                and len(item) == 3
                and all(isinstance(x, number) and not isinstance(x, bool) for x in item)
            )
            or (
                kind == "size"
                and (
                    (isinstance(item, int) and not isinstance(item, bool) and item > 0)
                    or (isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) and x > 0 for x in item))
                )
            )
        )
        if not ok:
            raise ZooError(f"{where}: preprocess '{key}' has an invalid value {item!r}")
        out[key] = list(item) if isinstance(item, list) else item
    return out


def _check_metrics(value: Any, where: str) -> tuple[Metric, ...]:
    if not isinstance(value, list):
        raise ZooError(f"{where}: 'metrics' must be an array of tables ([[models.NAME.metrics]])")
    metrics = []
    for i, item in enumerate(value):
        at = f"{where} metrics[{i}]"
        if not isinstance(item, Mapping):
            raise ZooError(f"{at}: must be a table")
        unknown = sorted(set(item) - set(_METRIC_KEYS))
        if unknown:
            raise ZooError(f"{at}: unknown key '{unknown[0]}'", f"Keys: {', '.join(_METRIC_KEYS)}")
        number = item.get("value")
        if not isinstance(number, int | float) or isinstance(number, bool) or not math.isfinite(number):
            raise ZooError(f"{at}: 'value' must be a finite number")
        texts = {k: _need_str(item, k, at) for k in ("suite", "dataset", "metric", "source")}
        metrics.append(Metric(value=float(number), **texts))  # type: ignore[arg-type]
    return tuple(metrics)


def validate_entry(
    name: str, data: Any, *, origin: str = "shipped", manifest: Path | None = None, where: str | None = None
) -> ZooEntry:
    """Validate one manifest entry and return it as a ``ZooEntry``."""
    where = where or f"zoo entry '{name}'"
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ZooError(
            f"{where}: invalid model name '{name}'",
            "Use letters, digits, '.', '_' and '-' (starting with a letter or digit)",
        )
    if not isinstance(data, Mapping):
        raise ZooError(f"{where}: must be a table")
    unknown = sorted(set(data) - _ENTRY_KEYS)
    if unknown:
        raise ZooError(f"{where}: unknown key '{unknown[0]}'", f"Known keys: {', '.join(sorted(_ENTRY_KEYS))}")
    arch = _need_str(data, "arch", where)
    source_text = _need_str(data, "source", where)
    assert arch is not None and source_text is not None
    source = parse_source(source_text, where=f"{where} source")
    sha256 = _need_str(data, "sha256", where, required=False)
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ZooError(f"{where}: 'sha256' must be 64 hexadecimal digits")
    elif source.kind in ("hf-hub", "url"):
        raise ZooError(
            f"{where}: missing 'sha256' for a {source.kind} source",
            "Every downloaded file must be pinned by its sha256 (sha256sum FILE)",
        )
    kind = _need_str(data, "kind", where)
    if kind not in KINDS:
        raise ZooError(f"{where}: kind '{kind}' is not one of {', '.join(KINDS)}")
    license_ = _need_str(data, "license", where)
    quick_gelu = data.get("quick_gelu", False)
    override = data.get("override", False)
    for key, flag in (("quick_gelu", quick_gelu), ("override", override)):
        if not isinstance(flag, bool):
            raise ZooError(f"{where}: '{key}' must be true or false")
    return ZooEntry(
        name=name,
        arch=arch,
        source=source,
        kind=kind,
        license=license_ or "",
        sha256=sha256,
        training_data=_need_str(data, "training_data", where, required=False),
        description=_need_str(data, "description", where, required=False),
        quick_gelu=quick_gelu,
        preprocess=_check_preprocess(data.get("preprocess", {}), where),
        metrics=_check_metrics(data.get("metrics", []), where),
        override=override,
        origin=origin,
        manifest=manifest,
    )


def parse_manifest(
    text: str, *, origin: str, path: Path | None = None, broken: dict[str, BrokenEntry] | None = None
) -> dict[str, ZooEntry]:
    """Parse and validate a manifest's text. Errors name the file. With ``broken``, an entry that fails validation
    is recorded there (its problem) instead of failing the whole manifest: one bad entry never hides the others."""
    label = str(path) if path else origin
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ZooError(f"zoo manifest {label} is not valid TOML ({exc})", "Fix the file") from exc
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise ZooError(
            f"zoo manifest {label}: schema {schema!r} is not supported",
            f"Write schema = {SCHEMA_VERSION} at the top of the file",
        )
    unknown = sorted(set(data) - {"schema", "models"})
    if unknown:
        raise ZooError(f"zoo manifest {label}: unknown top-level key '{unknown[0]}'", "Entries go under [models.NAME]")
    models = data.get("models", {})
    if not isinstance(models, Mapping):
        raise ZooError(f"zoo manifest {label}: 'models' must be a table of [models.NAME] tables")
    entries: dict[str, ZooEntry] = {}
    for name, entry in models.items():
        try:
            entries[name] = validate_entry(name, entry, origin=origin, manifest=path, where=f"{label}: entry '{name}'")
        except ZooError as exc:
            if broken is None:
                raise
            broken[name] = BrokenEntry(name, origin, path, exc.one_line())
    return entries


def read_manifest(path: Path, *, origin: str, broken: dict[str, BrokenEntry] | None = None) -> dict[str, ZooEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZooError(
            f"cannot read zoo manifest {path} ({exc.strerror})", f"Check the file (or unset {ENV_VAR})"
        ) from exc
    return parse_manifest(text, origin=origin, path=path, broken=broken)


# ----------------------------------------------------------------------------------------------
# Where the manifests live and how they merge
# ----------------------------------------------------------------------------------------------


def shipped_manifest_path() -> Path:
    """The shipped manifest: inside the installed wheel, or ``zoo/manifest.toml`` of a source checkout."""
    here = Path(__file__).resolve().parent
    candidates = [here / "_shipped" / "manifest.toml", here.parents[1] / "zoo" / "manifest.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ZooError(
        "the shipped zoo manifest is missing from this installation",
        "Reinstall starft (the wheel ships starft_cli/zoo/_shipped/manifest.toml)",
    )


def user_manifest_path() -> Path:
    """The user's overlay manifest (written by ``starft zoo add``)."""
    return config_dir() / USER_MANIFEST_NAME


def manifest_sources() -> list[tuple[str, Path]]:
    """The manifests merged, in order: shipped, user overlay, ``$STARFT_ZOO``."""
    sources = [("shipped", shipped_manifest_path())]
    user = user_manifest_path()
    if user.is_file():
        sources.append(("user", user))
    extra = os.environ.get(ENV_VAR, "").strip()
    if extra:
        path = Path(extra).expanduser()
        if not path.is_file():
            raise ZooError(f"{ENV_VAR} points to {path}, which is not a file", f"Fix or unset {ENV_VAR}")
        sources.append((ENV_VAR, path))
    return sources


def merge(
    layers: Iterable[Mapping[str, ZooEntry]], broken: dict[str, BrokenEntry] | None = None
) -> dict[str, ZooEntry]:
    """Merge manifests in order. A later entry with an existing name must set ``override = true``; one that does
    not is an error, or, with ``broken``, recorded there (the earlier entry stays)."""
    merged: dict[str, ZooEntry] = {}
    for layer in layers:
        for name, entry in layer.items():
            previous = merged.get(name)
            if previous is not None and not entry.override:
                exc = ZooError(
                    f"zoo entry '{name}' in {entry.manifest or entry.origin} would shadow the {previous.origin} entry "
                    f"of the same name ({previous.manifest or previous.origin})",
                    "Rename it, or add `override = true` to the entry if replacing it is intended",
                )
                if broken is None:
                    raise exc
                broken[name] = BrokenEntry(name, entry.origin, entry.manifest, exc.one_line())
                continue
            merged[name] = entry
    return merged


def load_zoo() -> tuple[dict[str, ZooEntry], dict[str, BrokenEntry]]:
    """All zoo entries, merged (shipped, user, ``$STARFT_ZOO``), and the broken ones apart (by name, with their
    problem). A manifest that is not TOML at all, or of another schema, is still an error naming the file."""
    broken: dict[str, BrokenEntry] = {}
    layers = [read_manifest(path, origin=origin, broken=broken) for origin, path in manifest_sources()]
    return merge(layers, broken), broken


def load_all() -> dict[str, ZooEntry]:
    """All valid zoo entries, merged (shipped, user, ``$STARFT_ZOO``); broken ones are left out (:func:`load_zoo`)."""
    return load_zoo()[0]


# ----------------------------------------------------------------------------------------------
# Writing (the user overlay)
# ----------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if ord(c) >= 32 else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else _toml_value(key)


def entries_to_toml(entries: Iterable[ZooEntry], header: str = "") -> str:
    """Render entries as a manifest (the inverse of ``parse_manifest``)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"schema = {SCHEMA_VERSION}")
    for entry in entries:
        lines.append(entry_to_toml(entry).rstrip("\n"))
    return "\n".join(lines) + "\n"


def entry_to_toml(entry: ZooEntry) -> str:
    """One ``[models.NAME]`` table (plus its metrics) in TOML."""
    fields = entry.to_toml_fields()
    metrics = fields.pop("metrics", [])
    lines = ["", f"[models.{_toml_key(entry.name)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in fields.items()]
    for metric in metrics:
        lines += ["", f"[[models.{_toml_key(entry.name)}.metrics]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in metric.items()]
    return "\n".join(lines) + "\n"


def read_user_entries() -> dict[str, ZooEntry]:
    """The valid entries of the user manifest (broken ones left out: :func:`user_entry_names` has every name)."""
    path = user_manifest_path()
    return read_manifest(path, origin="user", broken={}) if path.is_file() else {}


def _user_tables() -> dict[str, Any]:
    """The user manifest's ``[models.NAME]`` tables as written, valid or not."""
    path = user_manifest_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZooError(f"cannot read zoo manifest {path} ({exc})", "Fix the file") from exc
    models = data.get("models", {})
    return dict(models) if isinstance(models, Mapping) else {}


def user_entry_names() -> list[str]:
    """Every entry name of the user manifest, broken entries included."""
    return list(_user_tables())


def _write_user_tables(tables: Mapping[str, Any]) -> Path:
    """Rewrite the user manifest atomically from raw tables (entries that do not validate are kept as written)."""
    path = user_manifest_path()
    lines = ["# starft user zoo manifest (written by `starft zoo add`)", f"schema = {SCHEMA_VERSION}"]
    for name, fields in tables.items():
        if not isinstance(fields, Mapping):
            continue
        plain = {k: v for k, v in fields.items() if k != "metrics"}
        lines += ["", f"[models.{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items()]
        metrics = fields.get("metrics")
        for metric in metrics if isinstance(metrics, list) else []:
            if isinstance(metric, Mapping):
                lines += ["", f"[[models.{_toml_key(name)}.metrics]]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in metric.items()]
    text = "\n".join(lines) + "\n"
    parse_manifest(text, origin="user", path=path, broken={})  # never write what we could not read back
    atomic_write_text(path, text)
    return path


def write_user_entries(entries: Mapping[str, ZooEntry]) -> Path:
    """Rewrite the user overlay manifest atomically with ``entries``, keeping its broken entries as written."""
    valid = set(read_user_entries())
    tables = {n: f for n, f in _user_tables().items() if n not in valid}  # broken ones, as the user wrote them
    tables.update({name: entry.to_toml_fields() for name, entry in entries.items()})
    return _write_user_tables(tables)


def forget_user_entry(name: str) -> Path:
    """Remove entry ``name`` (valid or broken) from the user manifest; the others are kept as written.

    Raises:
        ZooError: no entry of that name in the user manifest.
    """
    tables = _user_tables()
    if name not in tables:
        raise ZooError(f"'{name}' is not in your user manifest ({user_manifest_path()})")
    del tables[name]
    return _write_user_tables(tables)
