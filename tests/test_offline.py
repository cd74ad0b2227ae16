"""Offline or with the Hub unreachable: the real cause (not cached; HF_HUB_OFFLINE or the unreachable endpoint), the
cache folder and the fix, in one line and within a few seconds (issue 9, item 10)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli import pretrained
from starft_cli.cli.app import app
from starft_cli.errors import WeightsUnavailableError
from starft_cli.models import CONFIG_NAME, WEIGHTS_NAME, load, save_checkpoint
from tests.zoo_helpers import hub_entry, write_zoo

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def _warm_imports() -> None:
    """Import what a load imports, so that the timings below measure waiting, not first imports."""
    import huggingface_hub.file_download  # noqa: F401
    import open_clip  # noqa: F401

    from starft_cli.pretrained import register_builtin_configs

    register_builtin_configs()


def _point_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, cache: Path, offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(pretrained, "_REACHABILITY", {})
    _warm_imports()


@pytest.fixture
def dead_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """HF_ENDPOINT at a closed local port (as a machine without network sees the Hub), HF_HUB_OFFLINE unset."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    _point_hub(monkeypatch, endpoint, tmp_path / "hf-cache", offline=False)
    return endpoint


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    _point_hub(monkeypatch, f"http://127.0.0.1:{_closed_port()}", cache, offline=True)
    return cache


def test_hf_hub_model_offline_names_the_cause_and_the_cache(offline: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load("hf-hub:some-org/some-model")
    assert time.monotonic() - started < 3
    message = info.value.one_line()
    assert "has no open_clip_config.json" not in message  # the old, wrong cause
    assert "model hf-hub:some-org/some-model: not in the local cache" in message
    assert str(offline) in message and "HF_HUB_OFFLINE is set" in message and "HF_HOME" in message


def test_hf_hub_model_with_an_unreachable_hub_fails_fast(dead_hub: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load("hf-hub:some-org/some-model")
    assert time.monotonic() - started < 5  # huggingface_hub alone retries for about a minute
    message = info.value.one_line()
    assert f"{dead_hub} cannot be reached (connection to 127.0.0.1:" in message and "refused" in message
    assert str(tmp_path / "hf-cache") in message and "HF_HUB_OFFLINE=1" in message


def test_a_cached_hf_hub_model_loads_with_the_hub_unreachable(dead_hub: str, tmp_path: Path, tiny) -> None:
    from tests.test_models import _write_hf_cache

    source = tmp_path / "src"
    save_checkpoint(tiny.model, source, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    _write_hf_cache(
        tmp_path / "home",
        "starft-test/tiny-dir",
        {WEIGHTS_NAME: source / WEIGHTS_NAME, CONFIG_NAME: source / CONFIG_NAME},
    )
    os.environ["HF_HUB_CACHE"] = str(tmp_path / "home" / "hub")  # restored by the fixture's monkeypatch
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(tmp_path / "home" / "hub")
    started = time.monotonic()
    assert load("hf-hub:starft-test/tiny-dir").fingerprint == tiny.fingerprint
    assert time.monotonic() - started < 5


def test_zoo_download_with_an_unreachable_hub_is_one_full_line_within_seconds(
    dead_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STARFT_ZOO", str(write_zoo(tmp_path / "zoo.toml", {"m": hub_entry("o/r", COMMIT, "a" * 64)})))
    for name in ("m", "vit-b-16-laion400m-e31"):  # a Hub entry, and an open_clip registry entry
        started = time.monotonic()
        result = runner.invoke(app, ["zoo", "download", name])
        assert time.monotonic() - started < 5, name
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert "not in the local cache" in line and str(tmp_path / "hf-cache") in line
        assert f"{dead_hub} cannot be reached" in line and "HF_HUB_OFFLINE=1" in line
        assert f"starft zoo download {name}" in line and "..." not in line  # not truncated


def test_zoo_download_offline_names_hf_hub_offline(offline: Path) -> None:
    result = runner.invoke(app, ["zoo", "download", "vit-b-16-laion400m-e31"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "HF_HUB_OFFLINE is set" in line and str(offline) in line and "Unset HF_HUB_OFFLINE" in line


def test_cli_classify_offline_in_a_fresh_process_is_fast(tmp_path: Path) -> None:
    """The whole command, from a new process (torch import included), with HF_HUB_OFFLINE=1 and an empty HF_HOME."""
    from tests.imagegen import make_image

    image = make_image(tmp_path / "i.jpg", seed=1)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    env["STARFT_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-m", "starft_cli", "classify", str(image), "-m", "hf-hub:org/name", "-l", "a,b"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "HF_HUB_OFFLINE is set" in line and str(tmp_path / "hf" / "hub") in line
    assert "open_clip_config.json" not in line
    assert elapsed < 30  # process start and imports; the failure itself makes no network wait


def test_the_reachability_probe_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A black-holed host (no answer at all) is given up after the timeout, not after huggingface_hub's retries."""

    def hang(*args, **kwargs):
        time.sleep(5)
        raise TimeoutError

    monkeypatch.setattr(pretrained, "_REACHABILITY", {})
    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.monotonic()
    reason = pretrained.unreachable("https://blackhole.invalid", timeout=0.5)
    assert time.monotonic() - started < 2
    assert reason == "no answer from blackhole.invalid:443 within 0.5 s"
    assert pretrained.unreachable("https://blackhole.invalid") == reason  # remembered for the process
