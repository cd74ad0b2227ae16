"""Hostile files: code-executing pickles, forged safetensors headers, unsafe manifests, weights of another
architecture, symlink loops and decompression bombs are refused with one line, without executing or allocating."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import zlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import CheckpointError, ImageError, WrongArchitectureError
from starft_cli.models import read_state_dict
from starft_cli.train.checkpoint import STATE_NAME, load_training_state
from tests.imagegen import make_class_folders, make_image
from tests.robustness.helpers import one_line_error, starft, train_args


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if anything unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_torch_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    return path


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickle_weights_that_would_run_code_are_refused_unexecuted(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_torch_file(tmp_path / f"model{suffix}", marker)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        read_state_dict(evil)
    assert not marker.exists()
    image = make_image(tmp_path / "x.jpg", seed=0)
    args = ["classify", str(image), "--labels", "a,b", "-m", str(evil), "--arch", "starft-tiny", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    line = one_line_error(result.stderr)
    assert str(evil) in line and "no pickled objects" in line
    assert not marker.exists()


def test_pickle_training_state_is_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints" / "last"
    _evil_torch_file(folder / STATE_NAME, marker)
    with pytest.raises(CheckpointError, match="cannot read training state"):
        load_training_state(folder)
    assert not marker.exists()


@pytest.mark.slow
def test_training_state_swapped_in_a_run_folder_is_refused_on_resume(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, full = reference
    run = tmp_path / "run"
    shutil.copytree(full, run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["out"] = str(run)
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    marker = tmp_path / "pwned"
    _evil_torch_file(run / "checkpoints" / "last" / STATE_NAME, marker)
    resumed = starft(*train_args(data, run, "--resume"))
    assert resumed.returncode == 1
    line = one_line_error(resumed.stderr)
    assert "cannot read training state" in line and STATE_NAME in line
    assert not marker.exists()


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"\0" * 16, declared: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", size) + raw + data)
    return path


FORGED = {
    "offsets-out-of-range": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 20]}}, None),
    "offsets-overlap-header": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}}, None),
    "huge-declared-tensor": ({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}, None),
    "huge-declared-header": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 1 << 60),
    "shape-disagrees-with-offsets": ({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 16]}}, None),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_safetensors_header_is_refused_without_allocating(tmp_path: Path, case: str) -> None:
    header, declared = FORGED[case]
    path = _safetensors(tmp_path / "model.safetensors", header, declared=declared)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"{case}: peak memory grew by {grown_kib} KiB"
    assert str(path) in info.value.one_line() and "\n" not in info.value.one_line()


def _manifest(entry: str) -> str:
    return f'schema = 1\n\n[models.evil]\narch = "ViT-B-16"\nkind = "starft"\nlicense = "MIT"\n{entry}\n'


COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = f'sha256 = "{"a" * 64}"'
MANIFESTS = {
    "path-traversal": (f'source = "hf-hub:org/m/../../../etc/passwd.safetensors@{COMMIT}"\n{SHA}', "unsafe file name"),
    "non-https-url": (f'source = "http://example.org/w.safetensors"\n{SHA}', "scheme 'http' is not allowed"),
    "missing-hash": (f'source = "hf-hub:org/m@{COMMIT}"', "missing 'sha256'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_unsafe_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    entry, needle = MANIFESTS[case]
    path = tmp_path / "zoo.toml"
    path.write_text(_manifest(entry), encoding="utf-8")
    monkeypatch.setenv("STARFT_ZOO", str(path))
    listed = CliRunner().invoke(app, ["zoo", "list"])  # the other entries are listed; the refused one is named
    assert listed.exit_code == 0 and "evil" not in listed.stdout and "vit-b-16-laion400m-e31" in listed.stdout
    assert listed.stderr.startswith("warning: zoo entry 'evil' is broken") and needle in listed.stderr
    result = CliRunner().invoke(app, ["zoo", "download", "evil"])
    assert result.exit_code == 1, result.output
    line = one_line_error(result.stderr)
    assert needle in line and str(path) in line, line


def test_weights_of_another_architecture_name_both(tmp_path: Path, tiny) -> None:
    from safetensors.torch import save_file

    from starft_cli.models import load

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    with pytest.raises(WrongArchitectureError) as info:
        load(str(path), arch="starft-small")
    line = info.value.one_line()
    assert "do not fit starft-small" in line and "looks like starft-tiny" in line and "`arch` starft-tiny" in line


def test_symlink_loops_in_a_dataset_do_not_hang(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", ["cat", "dog"], per_class=2)
    os.symlink(data, data / "cat" / "loop")  # back to the root
    os.symlink(data / "dog", data / "dog" / "self")  # to itself
    os.symlink(data / "dog" / "nowhere", data / "dog" / "nowhere")  # a link to itself (ELOOP)
    signal.alarm(60)  # a hang fails the test instead of blocking the suite
    try:
        check = CliRunner().invoke(app, ["data", "check", f"folder:{data}", "--deep"])
        args = ["classify", str(data), "--labels", "a,b", "-m", "starft-tiny:none", "--device", "cpu"]
        done = CliRunner().invoke(app, [*args, "--format", "json"])
    finally:
        signal.alarm(0)
    assert check.exit_code == 0 and "Traceback" not in check.output, check.output
    assert "  images: 4\n" in check.stdout and "  classes: 2\n" in check.stdout, check.stdout
    assert done.exit_code == 0, done.stderr
    assert len(json.loads(done.stdout)) == 4  # each real image once, none through a loop


def _png_bomb(path: Path, width: int, height: int, rows: int) -> Path:
    """An 8-bit grey PNG declaring width x height pixels, with ``rows`` rows of zeros as data (all of them: a valid
    image of a few hundred KiB that decodes to width*height bytes; fewer: only the header matters)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    ("width", "height", "rows"), [(10_000, 10_000, 10_000), (40_000, 40_000, 4)], ids=["pil-warns-only", "pil-refuses"]
)
def test_decompression_bomb_is_refused_not_decoded(tmp_path: Path, width: int, height: int, rows: int) -> None:
    import torchvision.io  # noqa: F401  (decode_file's first import weighs ~170 MiB: not what is measured)

    from starft_cli.data.pipeline import decode_file
    from starft_cli.eval.features import open_for_eval
    from starft_cli.images import read_image

    bomb = _png_bomb(tmp_path / "bomb.png", width, height, rows)
    assert bomb.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for read in (read_image, decode_file, lambda p: open_for_eval(p, 64)):
        with pytest.raises(ImageError, match="decompression bomb"):
            read(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing was decoded
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # starft never lets PIL's warning through
        with pytest.raises(ImageError):
            read_image(bomb)
    result = CliRunner().invoke(
        app, ["classify", str(bomb), "--labels", "a,b", "-m", "starft-tiny:none", "--device", "cpu"]
    )
    assert result.exit_code == 1
    assert "decompression bomb" in one_line_error(result.stderr)
