"""open_clip's architecture and pretrained-weights registries, as starft uses them.

The project's tiny architectures are registered here, and pretrained tags are resolved and fetched with open_clip's
own downloader (through the Hugging Face Hub cache), so ``ViT-B-16:laion400m_e31`` and a project-registered tag take
the same path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starft_cli.errors import WeightsUnavailableError

# The paper's weights: LAION-400M, as published through open_clip's pretrained registry.
PAPER_DEFAULT_TAG = "laion400m_e31"
# Project-registered pretrained tags (arch, tag) -> open_clip pretrained config dict.
_PROJECT_PRETRAINED: dict[tuple[str, str], dict[str, Any]] = {}
_CONFIGS_REGISTERED = False


def register_builtin_configs() -> None:
    """Register the project's tiny architectures (``starft-tiny``, ``starft-small``) with open_clip."""
    global _CONFIGS_REGISTERED
    if _CONFIGS_REGISTERED:
        return
    import open_clip

    open_clip.add_model_config(Path(__file__).parent / "model_configs")
    _CONFIGS_REGISTERED = True


def register_pretrained(arch: str, tag: str, *, hf_hub: str = "", url: str = "", **extra: Any) -> None:
    """Register a pretrained tag for an architecture, in open_clip's pretrained-config form.

    ``hf_hub`` is ``org/repo/`` (default weights file) or ``org/repo/filename``. The weights are then
    fetched by open_clip's own download code, exactly as for ``laion400m_e31``.
    """
    if not hf_hub and not url:
        raise ValueError("register_pretrained needs hf_hub= or url=")
    _PROJECT_PRETRAINED[(arch, tag)] = {"hf_hub": hf_hub, "url": url, **extra}


def list_architectures() -> list[str]:
    register_builtin_configs()
    import open_clip

    return list(open_clip.list_models())


def pretrained_cfg(arch: str, tag: str) -> dict[str, Any] | None:
    """open_clip's pretrained config of ``arch:tag`` (or one registered with :func:`register_pretrained`)."""
    import open_clip

    return _PROJECT_PRETRAINED.get((arch, tag)) or open_clip.get_pretrained_cfg(arch, tag) or None


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch_pretrained(arch: str, tag: str, cfg: Mapping[str, Any]) -> Path:
    """Fetch (or find in the local cache) the weights of a pretrained tag with open_clip's downloader."""
    import open_clip

    where = cfg.get("hf_hub") or cfg.get("url") or "?"
    try:
        path = open_clip.download_pretrained(dict(cfg))
    except Exception as exc:  # open_clip wraps hub and network errors in several types
        raise WeightsUnavailableError(
            f"weights for {arch}:{tag} ({where}) are not in the local cache ({hub_cache_dir()}) and could "
            f"not be downloaded ({short_error(exc)})",
            "Run the command once on a connected machine and copy its Hugging Face cache here (or point HF_HOME "
            "at a cache that has them); HF_HUB_OFFLINE=1 makes every run use only the cache",
        ) from exc
    if not path:
        raise WeightsUnavailableError(f"no download source for {arch}:{tag}")
    return Path(path)


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
