"""Model references: one parser for every command, one loader, safe checkpoints.

Reference forms (``--model`` / ``--backbone``):

* ``ViT-B-16``                 the paper's default weights for that architecture (``laion400m_e31``)
* ``ViT-B-16:laion400m_e32``   an architecture with an open_clip pretrained tag
* ``ViT-B-16:none``            random initialisation (deterministic for a seed)
* ``path/to/weights.safetensors`` (or ``.pt``/``.bin``/``.pth`` holding a state dict) with ``arch=`` or a
  sidecar ``open_clip_config.json``
* ``path/to/dir``              a directory with ``open_clip_config.json`` and weights (also ``local-dir:PATH``)
* ``hf-hub:org/repo[@revision]``
* a zoo name, resolved through the zoo manifest

Nothing here unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.errors import (
    CheckpointError,
    ModelNotFoundError,
    NonFiniteWeightsError,
    UsageError,
    WeightsUnavailableError,
    WrongArchitectureError,
)
from starft_cli.paths import atomic_path, atomic_write_text
from starft_cli.pretrained import (
    PAPER_DEFAULT_TAG,
    cached_revision,
    fetch_pretrained,
    hub_endpoint,
    hub_offline,
    list_architectures,
    not_cached_error,
    pretrained_cfg,
    register_builtin_configs,
    short_error,
    unreachable,
)
from starft_cli.runs import (  # a model folder's files (re-exported)
    CONFIG_NAME,
    HEAD_NAME,
    HF_WEIGHT_CANDIDATES,
    WEIGHTS_NAME,
)
from starft_cli.suggest import did_you_mean

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_TAGS = ("none", "random", "scratch")

# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference (:func:`parse_model_ref`); :func:`load` takes it as it is, so a reference checked
    early is not parsed again. ``kind`` is one of pretrained, file, dir, hf-hub, zoo; the fields that kind uses:

    * pretrained: ``arch`` and ``tag`` (the open_clip pretrained tag, or none/random/scratch)
    * file, dir: ``path`` (and ``arch`` when one was given for it)
    * hf-hub: ``repo`` and ``revision`` (None: the default branch)
    * zoo: ``zoo_name`` (the manifest entry's name)
    """

    raw: str
    kind: str
    arch: str | None = None
    tag: str | None = None
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None
    zoo_name: str | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "pretrained" and self.tag in RANDOM_TAGS


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~"))
        or os.sep in text
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or (os.altsep is not None and os.altsep in text)
    )


def _zoo_lookup(name: str) -> Any | None:
    try:
        from starft_cli import zoo
    except ImportError:  # the zoo is optional at this layer
        return None
    return zoo.find_entry(name)


def _zoo_names() -> list[str]:
    try:
        from starft_cli import zoo
    except ImportError:
        return []
    try:
        return list(zoo.entry_names())
    except Exception:  # a broken user manifest must not hide the real error
        return []


def parse_model_ref(ref: str, arch: str | None = None) -> ModelRef:
    """Parse any supported model reference (see the module docstring)."""
    ref = (ref or "").strip()
    if not ref:
        raise UsageError("empty model reference", "Name a model, e.g. ViT-B-16")
    if ref.startswith("hf-hub:"):
        repo, _, revision = ref[len("hf-hub:") :].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise UsageError(f"malformed Hub reference '{ref}'", "Use hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        return ModelRef(raw=ref, kind="hf-hub", repo=repo, revision=revision or None, arch=arch)
    if ref.startswith("local-dir:"):
        return _path_ref(ref, Path(ref[len("local-dir:") :]).expanduser(), arch, must_be_dir=True)
    if ref.startswith("zoo:"):
        return _zoo_ref(ref, ref[len("zoo:") :])
    candidate = Path(ref).expanduser()
    if candidate.exists() or _looks_like_path(ref):
        return _path_ref(ref, candidate, arch)

    name, sep, tag = ref.partition(":")
    archs = list_architectures()
    if name in archs:
        if sep and not tag:
            raise UsageError(f"empty pretrained tag in '{ref}'", f"Use {name}:TAG or {name}:none")
        if not sep and _zoo_lookup(ref) is not None:
            raise UsageError(
                f"'{ref}' is both an architecture and a zoo model",
                f"Write {ref}:TAG (or {ref}:none) for the architecture, zoo:{ref} for the zoo model",
            )
        return ModelRef(raw=ref, kind="pretrained", arch=name, tag=tag or _default_tag(name))
    if not sep and _zoo_lookup(ref) is not None:
        return _zoo_ref(ref, ref)
    see = "See `starft zoo list` for named models; architectures are open_clip's (e.g. ViT-B-16)"
    raise ModelNotFoundError(f"unknown model '{ref}'", did_you_mean(name, archs + _zoo_names(), then=see))


def _zoo_ref(raw: str, name: str) -> ModelRef:
    if _zoo_lookup(name) is None:
        hint = did_you_mean(name, _zoo_names(), then="See `starft zoo list`")
        raise ModelNotFoundError(f"unknown zoo model '{name}'", hint)
    return ModelRef(raw=raw, kind="zoo", zoo_name=name)


def _default_tag(arch: str) -> str:
    import open_clip

    if arch.startswith("starft-"):
        return "none"
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if PAPER_DEFAULT_TAG in tags:
        return PAPER_DEFAULT_TAG
    shown = ", ".join(tags[:6]) or "none published"
    raise UsageError(
        f"architecture '{arch}' has no default weights",
        f"Name a pretrained tag, e.g. {arch}:{tags[0] if tags else 'none'} (tags: {shown})",
    )


def _path_ref(raw: str, path: Path, arch: str | None, must_be_dir: bool = False) -> ModelRef:
    if not path.exists():
        raise ModelNotFoundError(f"no such file or directory: {path}", "Check the path to the weights")
    if path.is_dir():
        return ModelRef(raw=raw, kind="dir", path=path, arch=arch)
    if must_be_dir:
        raise UsageError(f"'{raw}' is not a directory", "local-dir: takes a directory")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UsageError(
            f"'{path}' is not a weights file",
            f"Use a {'/'.join(WEIGHT_SUFFIXES)} file holding a state dict, or a model directory",
        )
    return ModelRef(raw=raw, kind="file", path=path, arch=arch)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model with everything needed to use and save it."""

    model: Any
    preprocess_train: Callable[..., Any]
    preprocess: Callable[..., Any]
    tokenizer: Callable[..., Any]
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    ref: ModelRef
    arch: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def identity(self, device: str | torch.device | None = None) -> str:
        """:func:`model_identity` of this model (the key every cache of its outputs uses)."""
        return model_identity(self, device=device)


def load_model(
    ref: str | ModelRef, device: str | torch.device = "cpu", arch: str | None = None, seed: int = 0
) -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """Deprecated alias of :func:`load`: returns ``(model, preprocess, tokenizer)`` of ``load(...)`` and warns
    (``DeprecationWarning``). Use ``load(ref)`` and its ``.model``, ``.preprocess`` and ``.tokenizer``."""
    import warnings

    warnings.warn(
        "starft_cli.load_model() is deprecated; use starft_cli.load(ref), which returns a LoadedModel "
        "(.model, .preprocess, .tokenizer)",
        DeprecationWarning,
        stacklevel=2,
    )
    loaded = load(ref, device=device, arch=arch, seed=seed)
    return loaded.model, loaded.preprocess, loaded.tokenizer


def load(
    ref: str | ModelRef, device: str | torch.device = "cpu", arch: str | None = None, seed: int = 0
) -> LoadedModel:
    """Load a model reference (a string, parsed here, or a :class:`ModelRef` from :func:`parse_model_ref`, used as
    it is) with its transforms, tokenizer and configuration; the model is in eval mode on ``device``.

    ``arch`` names the architecture of a bare weights file (see the module docstring); ``seed`` seeds random
    initialisation (``ARCH:none``).

    Raises:
        ModelNotFoundError, UsageError: the reference names nothing loadable (see :func:`parse_model_ref`).
        WeightsUnavailableError: the weights are neither cached nor reachable.
        WrongArchitectureError: the weights do not fit the architecture.
        CheckpointError: a weights or config file cannot be read (or holds NaN/inf: NonFiniteWeightsError).
    """
    register_builtin_configs()
    parsed = ref if isinstance(ref, ModelRef) else parse_model_ref(ref, arch=arch)
    if parsed.kind == "pretrained":
        loaded = _load_pretrained(parsed, seed)
    elif parsed.kind == "file":
        loaded = _load_file(parsed, parsed.path, arch or parsed.arch, seed)
    elif parsed.kind == "dir":
        loaded = _load_dir(parsed, parsed.path, arch or parsed.arch, seed)
    elif parsed.kind == "hf-hub":
        loaded = _load_dir(parsed, _download_hf_repo(parsed), None, seed)
    elif parsed.kind == "zoo":
        loaded = _load_zoo(parsed, seed)
    else:  # pragma: no cover - parse_model_ref only makes the kinds above
        raise ModelNotFoundError(f"cannot load '{parsed.raw}'")
    loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _load_pretrained(ref: ModelRef, seed: int) -> LoadedModel:
    import open_clip

    arch, tag = ref.arch, ref.tag
    assert arch is not None and tag is not None
    if ref.is_random:
        return _build(ref, arch, seed=seed, source=f"{arch} (random init, seed {seed})")
    cfg = pretrained_cfg(arch, tag)
    if cfg is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"Known tags: {', '.join(tags) or 'none'}; or {arch}:none for random weights"
        raise ModelNotFoundError(
            f"unknown pretrained tag '{tag}' for {arch}", did_you_mean(tag, tags, then=known, cutoff=0.5)
        )
    checkpoint = fetch_pretrained(arch, tag, cfg)
    loaded = _build(
        ref,
        arch,
        seed=seed,
        source=f"{arch}:{tag}",
        quick_gelu=bool(cfg.get("quick_gelu", False)),
        preprocess_overrides=cfg,
    )
    _apply_state_dict(loaded.model, read_state_dict(checkpoint), source=f"{arch}:{tag}", arch=loaded.arch)
    return loaded


def _download_hf_repo(ref: ModelRef) -> Path:
    """Download ``open_clip_config.json`` and the weights of a Hub repo; return the snapshot folder.

    Offline (``HF_HUB_OFFLINE``) or with the Hub unreachable (found out in a few seconds), only the local cache is
    used, and a miss says so (never "has no open_clip_config.json", which would blame the repository).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert ref.repo is not None
    where = f"{ref.repo}@{ref.revision}" if ref.revision else ref.repo
    endpoint = hub_endpoint()
    reason = None if hub_offline() else unreachable(endpoint)
    local_only = hub_offline() or reason is not None
    what = f"model hf-hub:{where}"

    # offline, a branch is resolved here (huggingface_hub reads a ref file ending with a newline as another commit)
    revision = (cached_revision(ref.repo, ref.revision) or ref.revision) if local_only else ref.revision

    def get(filename: str) -> Path:
        return Path(hf_hub_download(ref.repo, filename, revision=revision, local_files_only=local_only))

    try:
        config_path = get(CONFIG_NAME)
        for name in HF_WEIGHT_CANDIDATES:
            try:
                get(name)
                break
            except LocalEntryNotFoundError:
                if local_only:  # another candidate may be the cached one
                    continue
                raise
            except EntryNotFoundError:
                continue
        else:
            if local_only:
                raise not_cached_error(f"the weights of {what}", f"{endpoint} cannot be reached ({reason})")
            raise ModelNotFoundError(
                f"Hub repo {where} has no weights file ({' or '.join(HF_WEIGHT_CANDIDATES)})",
                "Publish the model with `starft zoo publish`",
            )
        with contextlib.suppress(EntryNotFoundError, LocalEntryNotFoundError):
            get(HEAD_NAME)  # a classifier method's trained head, published beside the weights (optional)
    except LocalEntryNotFoundError as exc:  # before EntryNotFoundError: it is a subclass
        if local_only:
            raise not_cached_error(what, f"{endpoint} cannot be reached ({reason})") from exc
        raise not_cached_error(what, f"the download failed ({short_error(exc.__cause__ or exc, 300)})") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"Hub repo {where} not found ({short_error(exc)})", "Check the repo name and revision"
        ) from exc
    except EntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"Hub repo {where} has no {CONFIG_NAME}", "It is not an open_clip model repository"
        ) from exc
    except (ModelNotFoundError, WeightsUnavailableError):
        raise
    except Exception as exc:
        raise not_cached_error(what, f"the download failed ({type(exc).__name__}: {short_error(exc, 300)})") from exc
    return config_path.parent


def _load_zoo(ref: ModelRef, seed: int) -> LoadedModel:
    from starft_cli import zoo

    assert ref.zoo_name is not None
    entry = zoo.find_entry(ref.zoo_name)
    resolved = zoo.resolve(entry)  # downloads and verifies when needed
    if resolved.pretrained_tag is not None:
        inner = ModelRef(raw=ref.raw, kind="pretrained", arch=resolved.arch, tag=resolved.pretrained_tag)
        loaded = _load_pretrained(inner, seed)
    else:
        assert resolved.weights is not None
        loaded = _build(
            ref,
            resolved.arch,
            seed=seed,
            source=f"zoo:{ref.zoo_name}",
            quick_gelu=resolved.quick_gelu,
            preprocess_overrides=resolved.preprocess,
        )
        _apply_state_dict(
            loaded.model, read_state_dict(resolved.weights), source=f"zoo:{ref.zoo_name}", arch=loaded.arch
        )
        config = _read_config(resolved.weights.parent)  # a published classifier: its trained head beside it
        if config is not None and isinstance(config.get("starft"), dict):
            loaded.extra.setdefault("starft", config["starft"])
            _attach_head(loaded, resolved.weights.parent)
    loaded.ref = ref
    return loaded


def _read_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable {path} ({short_error(exc)})", "Fix or remove the file") from exc
    if not isinstance(data, dict) or "model_cfg" not in data:
        raise CheckpointError(f"{path} has no 'model_cfg'", "Write it with starft or open_clip's push_to_hf_hub")
    return data


def _load_file(ref: ModelRef, path: Path, arch: str | None, seed: int) -> LoadedModel:
    config = _read_config(path.parent)
    if arch and config is not None:
        _check_arch_matches_config(arch, config, path.parent / CONFIG_NAME)
        loaded = _build_from_config(ref, config, seed=seed, source=str(path))
    elif arch:
        loaded = _build(ref, _check_arch(arch), seed=seed, source=str(path))
    elif config is not None:
        loaded = _build_from_config(ref, config, seed=seed, source=str(path))
    else:
        raise UsageError(
            f"cannot tell the architecture of {path}",
            f"Pass `arch` (e.g. ViT-B-16), or put an {CONFIG_NAME} beside the file",
            param="arch",
        )
    _apply_state_dict(loaded.model, read_state_dict(path), source=str(path), arch=loaded.arch)
    return loaded


def _load_dir(ref: ModelRef, directory: Path, arch: str | None, seed: int) -> LoadedModel:
    config = _read_config(directory)
    weights = find_weights(directory)
    if weights is None:
        raise ModelNotFoundError(f"no weights file in {directory}", _no_weights_hint(directory))
    if arch and config is not None:
        _check_arch_matches_config(arch, config, directory / CONFIG_NAME)
        loaded = _build_from_config(ref, config, seed=seed, source=str(directory))
    elif arch:
        loaded = _build(ref, _check_arch(arch), seed=seed, source=str(directory))
    elif config is not None:
        loaded = _build_from_config(ref, config, seed=seed, source=str(directory))
    else:
        raise UsageError(
            f"{directory} has no {CONFIG_NAME}", "Pass `arch`, or save the model with starft", param="arch"
        )
    _apply_state_dict(loaded.model, read_state_dict(weights), source=str(weights), arch=loaded.arch)
    _attach_head(loaded, directory)
    return loaded


def _no_weights_hint(directory: Path) -> str:
    """What to pass instead of a folder without weights: a run directory's checkpoint folder when it is one."""
    from starft_cli.runs import CHECKPOINT_NAMES, RunLayout, is_model_folder

    layout = RunLayout(directory)
    found = [layout.checkpoint(n) for n in CHECKPOINT_NAMES if is_model_folder(layout.checkpoint(n))]
    if found:
        return f"{directory} is a run directory: pass its checkpoint, {' or '.join(str(p) for p in found)}"
    if layout.is_run() or layout.checkpoints.is_dir():
        return f"{directory} is a run directory without a finished checkpoint yet (checkpoints/best or last)"
    return f"Expected {WEIGHTS_NAME} (or a .pt/.bin/.pth state dict)"


def _attach_head(loaded: LoadedModel, directory: Path) -> None:
    """A classifier method's trained head beside the weights (``classification_head.safetensors``, rows in the
    order of the metadata's ``head_classnames``): kept in ``loaded.extra["head"]`` (C, d), logit scale folded
    in, with ``extra["head_classnames"]``; evaluation uses it (:func:`starft_cli.zeroshot.trained_head`)."""
    meta = loaded.extra.get("starft", {})
    names = meta.get("head_classnames")
    path = directory / HEAD_NAME
    if not path.is_file() or not isinstance(names, list):
        return
    head = read_state_dict(path).get("weight")
    if head is None or head.ndim != 2 or head.shape[0] != len(names):
        raise CheckpointError(f"{path} does not hold a ({len(names)}, d) head", "Fix or remove the file")
    loaded.extra["head"] = head.float()
    loaded.extra["head_classnames"] = [str(n) for n in names]
    templates = meta.get("head_templates")
    if isinstance(templates, list) and templates and all(isinstance(t, str) for t in templates):
        loaded.extra["head_templates"] = list(templates)


def find_weights(directory: Path) -> Path | None:
    """The weights file of a model directory (safetensors preferred)."""
    preferred = [WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "model.safetensors"]
    preferred += ["open_clip_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.pth"]
    for name in preferred:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    found.sort(key=lambda p: p.suffix.lower() != ".safetensors")
    return found[0] if found else None


def _check_arch(arch: str) -> str:
    archs = list_architectures()
    if arch not in archs:
        raise ModelNotFoundError(
            f"unknown architecture '{arch}'", did_you_mean(arch, archs) or "See open_clip.list_models()"
        )
    return arch


def _check_arch_matches_config(arch: str, config: Mapping[str, Any], config_path: Path) -> None:
    """``--arch`` given for weights that have an ``open_clip_config.json``: the two must describe the same model.

    They agree when the config names ``arch`` or its ``model_cfg`` equals open_clip's config of ``arch``; the
    config is then used (its ``quick_gelu`` and preprocessing apply). Otherwise :class:`WrongArchitectureError`
    naming both, never a silent override.
    """
    import open_clip

    arch = _check_arch(arch)
    named = config.get("arch") if isinstance(config.get("arch"), str) else None
    if named == arch:
        return
    expected = json.loads(canonical_json(open_clip.get_model_config(arch) or {}))
    actual = json.loads(canonical_json(config.get("model_cfg") or {}))
    if actual == expected:
        return
    differ = sorted(_differing_keys(expected, actual))
    what = f"architecture '{named}'" if named else "another model config"
    detail = f" (differs in: {', '.join(differ[:5])})" if differ and not named else ""
    raise WrongArchitectureError(
        f"`arch` {arch} conflicts with {config_path}, which describes {what}{detail}",
        f"Drop `arch` to load the model that {CONFIG_NAME} describes, or move the weights away from it to load "
        f"them as {arch}",
        param="arch",
    )


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _differing_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _build(
    ref: ModelRef,
    arch: str,
    *,
    seed: int,
    source: str,
    quick_gelu: bool = False,
    preprocess_overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _quiet(
            open_clip.create_model,
            arch,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=dict(preprocess_overrides or {}),
        )
    model_cfg = dict(open_clip.get_model_config(arch))
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    return _finish(ref, model, _arch_tokenizer(arch), model_cfg, arch=arch, source=source)


def _build_from_config(ref: ModelRef, config: Mapping[str, Any], *, seed: int, source: str) -> LoadedModel:
    import torch

    model_cfg = dict(config["model_cfg"])
    preprocess_cfg = dict(config.get("preprocess_cfg", {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = _quiet(_create_from_cfg, model_cfg, preprocess_cfg)
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"invalid model_cfg in {CONFIG_NAME} ({short_error(exc)})") from exc
    tokenizer = _tokenizer_for_cfg(model_cfg)
    arch = config.get("arch") if isinstance(config.get("arch"), str) else None
    loaded = _finish(ref, model, tokenizer, model_cfg, arch=arch, source=source)
    if "starft" in config:
        loaded.extra["starft"] = config["starft"]
    return loaded


def _create_from_cfg(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> Any:
    """Instantiate an open_clip model from a config dict, as open_clip does for ``local-dir:``."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, CONFIG_NAME).write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}), encoding="utf-8"
        )
        return open_clip.create_model(f"local-dir:{tmp}", load_weights=False)


def _tokenizer_for_cfg(model_cfg: Mapping[str, Any]) -> Any:
    import open_clip

    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.get_tokenizer(
            f"hf-hub:{text_cfg['hf_tokenizer_name']}", context_length=text_cfg.get("context_length")
        )
    return _simple_tokenizer(int(text_cfg.get("context_length", 77)))


@functools.cache
def _arch_tokenizer(arch: str) -> Any:
    """``open_clip.get_tokenizer(arch)``, built once per architecture in a process (tokenizers hold no per-model
    state; building the BPE vocabulary takes ~0.2 s per load otherwise)."""
    import open_clip

    return open_clip.get_tokenizer(arch)


@functools.cache
def _simple_tokenizer(context_length: int) -> Any:
    """open_clip's BPE tokenizer, built once per context length (building its vocabulary takes ~0.2 s; it holds no
    per-model state, so models loaded in one process, e.g. a model and its reference, share it)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an open_clip factory without its root-logger warnings about random initialisation."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        return fn(*args, **kwargs)
    finally:
        root.setLevel(level)


def _finish(
    ref: ModelRef, model: Any, tokenizer: Any, model_cfg: dict[str, Any], *, arch: str | None, source: str
) -> LoadedModel:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    # The config travels with the module (and its deep copies, e.g. a frozen teacher) for model_identity().
    model.starft_model_cfg = dict(model_cfg)
    return LoadedModel(
        model=model,
        preprocess_train=image_transform_v2(pp, is_train=True),
        preprocess=image_transform_v2(pp, is_train=False),
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        preprocess_cfg={k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()},
        ref=ref,
        arch=arch,
        source=source,
    )


# ----------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------

_PREFIXES = ("module.model.", "module.", "model.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, without unpickling arbitrary objects.

    Accepts a bare state dict, one under ``state_dict`` (or ``model``), and strips the ``module.`` /
    ``module.model.`` prefixes written by DataParallel research code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no such weights file: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read weights from {path} ({short_error(exc)})",
            "Use a safetensors file or a torch file that holds only tensors (no pickled objects)",
        ) from exc
    if isinstance(data, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in data and isinstance(data[key], Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path} holds no state dict", "Save the model's state_dict()")
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    check_finite_weights(state, str(path))
    return _strip_prefixes(state)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity (one reduction per tensor)."""
    import torch

    return [
        name
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor)
        and (tensor.is_floating_point() or tensor.is_complex())
        and not bool(torch.isfinite(tensor).all())
    ]


def check_finite_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinite values (what a diverged run writes): every loader calls this.

    Raises:
        NonFiniteWeightsError: naming ``source`` and the first bad tensor.
    """
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(
            f"weights in {source} are not finite: {len(bad)} of {len(state)} tensors hold NaN or inf (e.g. {bad[0]})",
            "They come from a diverged run; use an earlier checkpoint, or fine-tune again with a lower `lr`",
            param="lr",
        )


COMPILED_SEGMENT = "_orig_mod."


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the wrappers' prefixes: ``_orig_mod.`` (``torch.compile``) wherever it is in a key (a
    tower compiled alone writes ``visual._orig_mod.conv1.weight``), then ``module.`` / ``model.`` prefixes that
    every key shares."""
    if any(COMPILED_SEGMENT in k for k in state):
        state = {_drop_compiled(k): v for k, v in state.items()}
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
                break
    return state


def _drop_compiled(key: str) -> str:
    """``key`` without its ``_orig_mod.`` segments (only whole dotted segments: ``a._orig_mod.b`` -> ``a.b``)."""
    parts = [p for p in key.split(".") if p != COMPILED_SEGMENT.rstrip(".")]
    return ".".join(parts)


def state_signature(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """What a CLIP state dict's tensor shapes say about its architecture (the features that can be read off):
    ``embed_dim``, ``text_width``, ``text_layers``, ``context_length`` and, for ViT image towers, ``vision_width``,
    ``vision_layers``, ``patch_size`` and ``image_size``."""
    sig: dict[str, int] = {}
    if "text_projection" in shapes and len(shapes["text_projection"]) == 2:
        sig["embed_dim"] = shapes["text_projection"][1]
    if "ln_final.weight" in shapes:
        sig["text_width"] = shapes["ln_final.weight"][0]
    if "positional_embedding" in shapes:
        sig["context_length"] = shapes["positional_embedding"][0]
    blocks = {k.split(".")[2] for k in shapes if k.startswith("transformer.resblocks.")}
    if blocks:
        sig["text_layers"] = len(blocks)
    conv = shapes.get("visual.conv1.weight")
    if conv is not None and len(conv) == 4:
        sig["vision_width"], sig["patch_size"] = conv[0], conv[2]
        vblocks = {k.split(".")[3] for k in shapes if k.startswith("visual.transformer.resblocks.")}
        sig["vision_layers"] = len(vblocks)
        pos = shapes.get("visual.positional_embedding")
        if pos is not None:
            sig["image_size"] = round(math.sqrt(max(pos[0] - 1, 0))) * conv[2]
    return sig


def _config_signature(cfg: Mapping[str, Any]) -> dict[str, int]:
    text, vision = cfg.get("text_cfg", {}) or {}, cfg.get("vision_cfg", {}) or {}
    if "hf_model_name" in text:
        return {}
    sig = {
        "embed_dim": cfg.get("embed_dim"),
        "text_width": text.get("width", 512),
        "text_layers": text.get("layers", 12),
        "context_length": text.get("context_length", 77),
    }
    if not vision.get("timm_model_name") and isinstance(vision.get("layers", 12), int):
        patch = vision.get("patch_size", 16)
        sig.update(
            vision_width=vision.get("width", 768),
            vision_layers=vision.get("layers", 12),
            patch_size=patch,
            image_size=vision.get("image_size", 224),
        )
    return {k: v for k, v in sig.items() if isinstance(v, int)}


def guess_architectures(state: Mapping[str, Any], exclude: str | None = None) -> list[str]:
    """open_clip architectures (starft's own included) whose shapes agree with ``state`` on every feature of
    :func:`state_signature` that both show, most features first; empty when nothing fits."""
    import open_clip

    sig = state_signature({k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")})
    if len(sig) < 3:
        return []
    scored = []
    for name in open_clip.list_models():
        if name == exclude:
            continue
        cfg_sig = _config_signature(open_clip.get_model_config(name) or {})
        common = set(sig) & set(cfg_sig)
        if len(common) >= 3 and all(sig[k] == cfg_sig[k] for k in common):
            scored.append((-len(common), name))
    return [name for _, name in sorted(scored)]


def _apply_state_dict(model: Any, state: dict[str, Any], source: str, arch: str | None = None) -> None:
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].shape != own["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(
                f"{len(wrong_shape)} tensors of the wrong shape (e.g. {k}: {tuple(state[k].shape)} "
                f"in the file, {tuple(own[k].shape)} expected)"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        guesses = guess_architectures(state, exclude=arch)
        looks = f"; the file looks like {' or '.join(guesses[:3])}" if guesses else ""
        hint = f"Pass `arch` {guesses[0]}" if guesses else "Pass the architecture the weights were trained with"
        raise WrongArchitectureError(
            f"weights in {source} do not fit {arch or 'the architecture'}{looks}: " + "; ".join(parts),
            f"{hint} (`arch`), or check the file" if not guesses else f"{hint}, or check the file",
            param="arch",
        )
    model.load_state_dict(state, strict=True)


def weights_fingerprint(model: Any) -> str:
    """A content fingerprint of a model's weights (a module, or its state dict), cheap enough to compute on every
    load.

    Per tensor: name, shape, dtype, the float64 sum and a strided sample of at most ~1024 values.
    """
    import torch

    digest = hashlib.sha256()
    state = model if isinstance(model, Mapping) else model.state_dict()
    with torch.no_grad():
        for name, tensor in sorted(state.items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 1024)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            if flat.is_floating_point() or flat.is_complex():
                digest.update(f"{torch.sum(flat, dtype=torch.float64).item():.12e}|".encode())
            else:
                digest.update(f"{int(flat.sum().item())}|".encode())
            digest.update(flat[::step].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:32]


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, tuples as lists, no whitespace) of a config value, for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical_default)


def _canonical_default(value: Any) -> Any:
    if isinstance(value, tuple | set | frozenset):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What a tokenizer's output depends on: its class, context length and (Hugging Face tokenizers) its name and
    text cleaning. Two tokenizers with equal identities give the same tokens for the same texts."""
    ident: dict[str, Any] = {"type": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"}
    for attr in ("context_length", "vocab_size", "sot_token_id", "eot_token_id", "clean_fn", "reduction_fn"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ident[attr] = _callable_name(value) if callable(value) else value
    for attr in ("strip_sep_token", "language"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str | int | float | bool):
            ident[attr] = value
    inner = getattr(tokenizer, "tokenizer", None)
    name = getattr(inner, "name_or_path", None) if inner is not None else None
    if name:
        ident["name"] = str(name)
    return ident


def _callable_name(fn: Any) -> str:
    """A process-independent name of a function or ``functools.partial`` (no memory addresses)."""
    inner = getattr(fn, "func", None)
    if inner is not None:
        args = [repr(a) for a in getattr(fn, "args", ())]
        args += [f"{k}={v!r}" for k, v in sorted(getattr(fn, "keywords", {}).items())]
        return f"{_callable_name(inner)}({', '.join(args)})"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def model_identity(
    model: LoadedModel | Any,
    tokenizer: Any | None = None,
    *,
    fingerprint: str | None = None,
    device: str | torch.device | None = None,
) -> str:
    """The identity of a model's outputs, the key of every cache of them (zero-shot heads, eval features, the
    spurious text bank): a sha256 (40 hex digits) over

    * the weights fingerprint (:func:`weights_fingerprint`),
    * the whole open_clip model config (canonical JSON; e.g. ``quick_gelu`` changes every activation),
    * the module's structure (its ``repr``: activation and norm classes as actually built),
    * the preprocessing config (size, mean, std, interpolation, resize mode, ...),
    * the tokenizer (class, context length, name),
    * the parameter dtype and the device type (CPU and CUDA kernels give different low bits),
    * the torch and open_clip versions.

    ``model`` is a :class:`LoadedModel` or a bare open_clip module (then pass its ``tokenizer``; its config is the
    one :func:`load` attached, and ``fingerprint`` saves recomputing the weights fingerprint).
    """
    import open_clip
    import torch

    if isinstance(model, LoadedModel):
        module, tokenizer = model.model, model.tokenizer
        fingerprint = fingerprint or model.fingerprint
        model_cfg: Any = model.model_cfg
        preprocess_cfg: Any = model.preprocess_cfg
    else:
        module = model
        fingerprint = fingerprint or weights_fingerprint(module)
        model_cfg = getattr(module, "starft_model_cfg", None)
        visual = getattr(module, "visual", None)
        preprocess_cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    first = next(iter(module.parameters()), None)
    if device is None:
        device = first.device if first is not None else "cpu"
    payload = {
        "weights": fingerprint,
        "model_cfg": model_cfg,
        "structure": hashlib.sha256(repr(module).encode("utf-8")).hexdigest(),
        "preprocess_cfg": preprocess_cfg,
        "tokenizer": tokenizer_identity(tokenizer) if tokenizer is not None else None,
        "dtype": str(first.dtype) if first is not None else None,
        "device": torch.device(device).type,
        "versions": [torch.__version__, open_clip.__version__],
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:40]


def save_checkpoint(
    model: Any,
    directory: str | os.PathLike[str],
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any] | None = None,
    *,
    arch: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    head: torch.Tensor | None = None,
) -> Path:
    """Save weights as safetensors plus ``open_clip_config.json``, each written atomically; with ``head`` (a
    classifier method's head, (C, d), logit scale folded in, rows in the order of ``metadata["head_classnames"]``)
    also ``classification_head.safetensors``.

    The folder loads with plain open_clip (``create_model_and_transforms(arch, pretrained=file)`` or
    ``local-dir:``) and with every starft command (which use the head: :func:`starft_cli.zeroshot.trained_head`).

    Raises:
        ValueError: ``head`` without ``head_classnames`` of its number of rows in ``metadata``.
        OSError: a write failed (a full disk: :func:`starft_cli.paths.as_os_error`).
    """
    from safetensors.torch import save_file

    names = (metadata or {}).get("head_classnames")
    if head is not None and (head.ndim != 2 or not isinstance(names, list) or len(names) != head.shape[0]):
        raise ValueError("a head needs metadata['head_classnames'], one name per row")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    if head is not None:
        with atomic_path(directory / HEAD_NAME) as tmp:
            save_file({"weight": head.detach().float().cpu().contiguous()}, str(tmp))
    config: dict[str, Any] = {"model_cfg": dict(model_cfg), "preprocess_cfg": dict(preprocess_cfg or {})}
    if arch:
        config["arch"] = arch
    if metadata:
        config["starft"] = dict(metadata)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, default=_json_default) + "\n")
    return directory / WEIGHTS_NAME


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
