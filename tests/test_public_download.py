"""Public dataset archives: `starft data download` fetches, verifies, resumes and extracts atomically (against a
local HTTP server; tests/hubserver.py ArchiveServer)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.registry import Missing, resolve
from starft_cli.data.sources import public
from starft_cli.download import DownloadError, download_verified
from tests.hubserver import ArchiveServer, archives  # noqa: F401  (fixture)
from tests.layouts import make_waterbirds

runner = CliRunner()


def _waterbirds_archive(tmp_path: Path) -> bytes:
    folder = make_waterbirds(tmp_path / "made")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def _serve(server: ArchiveServer, monkeypatch, data: bytes, sha256: str | None) -> str:
    server.files["/dro/wb.tar.gz"] = data
    source = public.PUBLIC_SOURCES["waterbirds"]
    item = dataclasses.replace(source.files[0], url=server.url + "/dro/wb.tar.gz", size=len(data), sha256=sha256)
    monkeypatch.setitem(public.PUBLIC_SOURCES, "waterbirds", dataclasses.replace(source, files=(item,)))
    return item.url


def test_download_verifies_and_extracts_atomically(archives: ArchiveServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    data = _waterbirds_archive(tmp_path)
    _serve(archives, monkeypatch, data, hashlib.sha256(data).hexdigest())
    root = tmp_path / "root"
    result = runner.invoke(app, ["data", "download", "waterbirds", "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    assert (
        f"verified waterbird_complete95_forest2water2.tar.gz sha256 {hashlib.sha256(data).hexdigest()}" in result.stderr
    )
    ds = resolve("waterbirds", root, "test")
    assert not isinstance(ds, Missing) and len(ds) == 8
    assert sorted(p.name for p in root.iterdir()) == [".downloads", "waterbird_complete95_forest2water2"]
    assert list((root / ".downloads").iterdir()) == []  # the archive is gone once extracted


def test_interrupted_download_resumes(archives: ArchiveServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    import types

    import huggingface_hub.file_download as fd
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # small pieces: a cut body keeps what arrived
    monkeypatch.setattr(fd, "time", types.SimpleNamespace(sleep=lambda s: None))  # skip the retry pauses
    data = _waterbirds_archive(tmp_path)
    url = _serve(archives, monkeypatch, data, hashlib.sha256(data).hexdigest())
    archives.drop["/dro/wb.tar.gz"] = -1  # every GET hangs up halfway: the run fails, keeping what arrived
    target = tmp_path / "dl" / "wb.tar.gz"
    with pytest.raises(DownloadError, match="kept for resuming"):
        download_verified(url, target, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    part = target.with_name("wb.tar.gz.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not target.exists()  # nothing looks complete
    archives.drop.clear()
    download_verified(url, target, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert target.read_bytes() == data and not part.exists()
    last = [h for m, p, h in archives.requests if m == "GET"][-1]
    assert last["range"] == f"bytes={kept}-"  # resumed where the kept part ended


def test_checksum_mismatch_is_refused_and_nothing_kept(archives: ArchiveServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    data = _waterbirds_archive(tmp_path)
    _serve(archives, monkeypatch, data, "0" * 64)
    root = tmp_path / "root"
    result = runner.invoke(app, ["data", "download", "waterbirds", "--data-root", str(root)])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("error: checksum mismatch for waterbirds: waterbird_complete95_forest2water2.tar.gz")
    assert f"expected sha256 {'0' * 64}, got {hashlib.sha256(data).hexdigest()}; the file was deleted" in line
    assert not (root / "waterbird_complete95_forest2water2").exists()
    assert list((root / ".downloads").iterdir()) == []


def test_disk_full_leaves_nothing_that_looks_complete(archives: ArchiveServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    import huggingface_hub.file_download as fd

    data = _waterbirds_archive(tmp_path)
    url = _serve(archives, monkeypatch, data, hashlib.sha256(data).hexdigest())

    def full(*args, **kwargs):  # the disk fills while the body is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fd, "http_get", full)
    target = tmp_path / "dl" / "wb.tar.gz"
    with pytest.raises(DownloadError, match="no space left on the disk") as info:
        download_verified(url, target, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert "never counts as downloaded" in info.value.one_line()
    assert not target.exists()
    monkeypatch.undo()
    _serve(archives, monkeypatch, data, hashlib.sha256(data).hexdigest())
    download_verified(url, target, sha256=hashlib.sha256(data).hexdigest(), size=len(data))  # the next run restarts
    assert target.read_bytes() == data


def test_a_source_that_needs_a_login_says_how_to_get_it() -> None:
    result = runner.invoke(app, ["data", "download", "imagenet", "--split", "train"])
    assert result.exit_code == 1
    assert "register at https://image-net.org" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_source_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    source = public.PUBLIC_SOURCES["cifar10.2"]
    item = dataclasses.replace(source.files[0], url="http://127.0.0.1:9/cifar102_train.npz")
    monkeypatch.setitem(public.PUBLIC_SOURCES, "cifar10.2", dataclasses.replace(source, files=(item,)))
    result = runner.invoke(app, ["data", "download", "cifar10.2", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "http://127.0.0.1:9/cifar102_train.npz cannot be reached" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
