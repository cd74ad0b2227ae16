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
from starft_cli.runs import HF_WEIGHT_CANDIDATES

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
    """The Hugging Face Hub cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``), read now."""
    import os

    from huggingface_hub import constants

    return str(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


_TRUE = ("1", "on", "yes", "true", "y")


def cached_revision(repo: str, revision: str | None = None) -> str | None:
    """The commit that ``revision`` (a branch or tag; default ``main``; a 40-hex commit as it is) of Hub model
    ``repo`` names in the local Hugging Face cache, when its snapshot folder is there; else None. Reads
    ``refs/REVISION`` stripped of surrounding whitespace: a ref file ending with a newline (as written by hand or by
    other tools) names the same commit, where huggingface_hub 2.4's own lookup reads the newline as part of it."""
    import os
    import re

    revision = revision or "main"
    folder = Path(hub_cache_dir()) / f"models--{repo.replace('/', '--')}"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit: str | None = revision
    else:
        try:
            commit = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
    if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit) or not os.path.isdir(folder / "snapshots" / commit):
        return None
    return commit


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not only when huggingface_hub was imported)."""
    import os

    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub endpoint (``HF_ENDPOINT``, read now)."""
    import os

    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


_REACHABILITY: dict[tuple[str, int], str | None] = {}
PROBE_TIMEOUT_S = 3.0


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the host of ``url`` cannot be reached, or None when a TCP connection to it (or to the proxy that
    ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` names for it) opens within ``timeout`` seconds.

    Without this, huggingface_hub's retries make an offline machine wait about a minute before failing. The answer
    is remembered per host for the process.
    """
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme) or urllib.request.getproxies().get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 8080
    key = (host, port)
    if key in _REACHABILITY:
        return _REACHABILITY[key]
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except socket.gaierror:
            outcome.append(f"cannot resolve {host}")
        except ConnectionRefusedError:
            outcome.append(f"connection to {host}:{port} refused")
        except TimeoutError:
            outcome.append(f"no answer from {host}:{port} within {timeout:g} s")
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    reason = outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"
    _REACHABILITY[key] = reason
    return reason


def not_cached_error(what: str, reason: str, hint: str | None = None) -> WeightsUnavailableError:
    """The one-line error for weights that are neither cached nor downloadable: ``what``, the cache folder, the
    cause (HF_HUB_OFFLINE is set, or ``reason``: why the Hub cannot be reached) and how to fix it."""
    offline = hub_offline()
    cause = "HF_HUB_OFFLINE is set, so nothing is downloaded" if offline else reason
    default_hint = (
        "Unset HF_HUB_OFFLINE on a connected machine to download it once, or point HF_HOME (or HF_HUB_CACHE) at a "
        "Hugging Face cache that has it"
        if offline
        else "Connect and run it again, or point HF_HOME (or HF_HUB_CACHE) at a Hugging Face cache that has it and "
        "set HF_HUB_OFFLINE=1 to use only the cache, without waiting for the network"
    )
    message = f"{what}: not in the local cache ({hub_cache_dir()}), and {cause}"
    return WeightsUnavailableError(message, hint or default_hint)


def hub_files(cfg: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """The Hub repo and the candidate files (in open_clip's order of preference) of a pretrained config, or None
    when it has no ``hf_hub`` source."""
    hub = str(cfg.get("hf_hub") or "")
    if not hub:
        return None
    parts = hub.strip("/").split("/")
    repo = "/".join(parts[:2])
    if len(parts) > 2:
        name = "/".join(parts[2:])
        safe = [name.rsplit(".", 1)[0] + ".safetensors"] if not name.endswith(".safetensors") else []
        return repo, [*safe, name]
    return repo, list(HF_WEIGHT_CANDIDATES)


def cached_pretrained(cfg: Mapping[str, Any]) -> Path | None:
    """The weights of a pretrained config in the local caches (Hugging Face cache, or open_clip's URL cache), or None.
    Makes no request."""
    import os

    from huggingface_hub import try_to_load_from_cache

    found = hub_files(cfg)
    if found is not None:
        repo, names = found
        for name in names:
            path = try_to_load_from_cache(repo, name, cache_dir=hub_cache_dir(), revision=cached_revision(repo))
            if isinstance(path, str):
                return Path(path)
    url = str(cfg.get("url") or "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
    return None


def fetch_pretrained(arch: str, tag: str, cfg: Mapping[str, Any], hint: str | None = None) -> Path:
    """Fetch (or find in the local cache) the weights of a pretrained tag with open_clip's downloader.

    Offline (``HF_HUB_OFFLINE``) or with the Hub unreachable (checked in a few seconds), only the cache is used and
    a miss is a one-line :class:`WeightsUnavailableError` naming the cause and the cache folder.
    """
    import open_clip

    where = cfg.get("hf_hub") or cfg.get("url") or "?"
    what = f"weights for {arch}:{tag} ({where})"
    source = hub_endpoint() if cfg.get("hf_hub") else str(cfg.get("url") or hub_endpoint())
    reason = None if hub_offline() else unreachable(source)
    if hub_offline() or reason:
        cached = cached_pretrained(cfg)
        if cached is not None:
            return cached
        raise not_cached_error(what, f"{source} cannot be reached ({reason})", hint)
    try:
        path = open_clip.download_pretrained(dict(cfg))
    except Exception as exc:  # open_clip wraps hub and network errors in several types
        raise WeightsUnavailableError(
            f"{what} are not in the local cache ({hub_cache_dir()}) and could not be downloaded "
            f"({short_error(exc, 300)})",
            hint
            or "Run the command once on a connected machine and copy its Hugging Face cache here (or point HF_HOME "
            "at a cache that has them); HF_HUB_OFFLINE=1 makes every run use only the cache",
        ) from exc
    if not path:
        raise WeightsUnavailableError(f"no download source for {arch}:{tag}")
    return Path(path)


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
