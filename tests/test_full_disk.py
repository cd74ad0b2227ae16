"""A full disk, or a file too large, as the libraries really report it: safetensors raises a ``SafetensorError``,
torch a ``RuntimeError`` from its zip writer. Every atomic write maps them to the OSError path (one line naming the
file, no --resume hint where there is nothing to resume), leaves no partial output, and a cache write only warns.

The messages are the libraries' own, measured on a full 1 MiB tmpfs (``mount -t tmpfs -o size=1m``); the
end-to-end tests make the libraries fail for real with a per-process file size limit (RLIMIT_FSIZE), which needs
no mount and no root."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from starft_cli.cli.app import os_error_line
from starft_cli.paths import as_os_error, atomic_dir, atomic_path

SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534"


def test_safetensors_error_of_a_full_disk_is_enospc_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        save_file({"a": torch.zeros(4)}, str(tmp))  # a real write first, then the error a full disk gives
        raise SafetensorError(SAFETENSORS_FULL)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert isinstance(info.value.__cause__, SafetensorError)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_torch_zip_writer_error_is_enospc_on_a_full_disk_and_eio_otherwise(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "state.pt"
    assert as_os_error(RuntimeError(TORCH_FULL), target).errno == errno.EIO  # this disk has room: not "full"
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    mapped = as_os_error(RuntimeError(TORCH_FULL), target)
    assert (mapped.errno, mapped.filename) == (errno.ENOSPC, str(target))
    assert as_os_error(RuntimeError("basic_ios::clear: iostream error"), target).errno == errno.ENOSPC
    assert as_os_error(RuntimeError("size mismatch for visual.proj"), target) is None  # not a write failure
    assert as_os_error(ValueError("No space left on device (os error 28)"), target) is None


def test_a_file_written_inside_an_atomic_folder_is_named_at_its_final_place(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, atomic_dir(tmp_path / "out") as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "open_clip_model.safetensors"))
    assert info.value.filename == str(tmp_path / "out" / "open_clip_model.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as info, atomic_dir(tmp_path / "out"):
        raise SafetensorError(SAFETENSORS_FULL)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "out"))


@pytest.mark.parametrize("command", ["eval", "report", "probe", "wise", "classify"])
def test_the_hint_names_the_file_and_resume_only_where_a_run_continues(command: str) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/data/out/results.json")
    line = os_error_line(exc, command)
    assert line == "No space left on device: /data/out/results.json. Free some disk space and rerun"
    assert os_error_line(exc, "finetune").endswith("Free some disk space and rerun (a run continues with --resume)")


def _limited(limit: int):
    def setup() -> None:  # a write past `limit` bytes fails with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return setup


def _starft(args: list[str], limit: int, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STARFT_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "starft_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limited(limit),
        timeout=600,
    )


def test_wise_on_a_write_failure_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    from starft_cli.models import load, save_checkpoint

    ft = load("starft-tiny:none", seed=1)
    save_checkpoint(ft.model, tmp_path / "ft", ft.model_cfg, ft.preprocess_cfg, arch="starft-tiny")
    out = tmp_path / "wise"
    args = ["wise", "--zero-shot", "starft-tiny:none", "--fine-tuned", str(tmp_path / "ft"), "--out", str(out)]
    result = _starft(args, 1 << 20, tmp_path / "home")  # the weights are 13 MB: safetensors fails for real
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: File too large: {out / 'alpha_0.5' / 'open_clip_model.safetensors'}. The file is larger than "
        "this file system (or a limit) allows: choose another path\n"
    )
    assert not out.exists()


def test_classify_warns_and_answers_when_the_head_cache_cannot_be_written(tmp_path: Path, images: list[Path]) -> None:
    home = tmp_path / "home"
    args = ["classify", str(images[0]), "--labels", "red,blue", "-m", "starft-tiny:none", "--device", "cpu"]
    result = _starft([*args, "--format", "json"], 200, home)  # the head entry (2 x 32 floats) is over 200 bytes
    assert result.returncode == 0, result.stderr
    assert '"label": "red"' in result.stdout or '"label": "blue"' in result.stdout
    assert "warning: could not write the zero-shot head cache (File too large: " in result.stderr
    assert "continuing without it" in result.stderr
    assert not [p for p in (home / "cache" / "heads").iterdir() if p.suffix == ".safetensors"]
