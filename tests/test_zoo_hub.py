"""Zoo downloads with the real huggingface_hub client against the emulated Hub on 127.0.0.1 (tests/hubserver.py)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from starft_cli import zoo
from starft_cli.cli.app import app
from starft_cli.errors import ChecksumError, WeightsUnavailableError, ZooError
from tests.hubserver import HubServer, hub  # noqa: F401  (fixture)
from tests.imagegen import make_image
from tests.zoo_helpers import CONFIG, WEIGHTS, hub_entry, sha256_bytes, tiny_checkpoint, write_zoo  # noqa: F401

runner = CliRunner()
REPO = "starft-test/tiny"


class RecordingBar:
    """A tqdm stand-in that records what huggingface_hub reports."""

    instances: ClassVar[list[RecordingBar]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.total = kwargs.get("total")
        self.desc = kwargs.get("desc")
        self.n = int(kwargs.get("initial") or 0)
        RecordingBar.instances.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def served(hub: HubServer, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """The tiny model committed to the emulated Hub and listed in a STARFT_ZOO manifest as 'tiny-zoo'."""
    weights = (tiny_checkpoint / WEIGHTS).read_bytes()
    commit = hub.commit(REPO, {WEIGHTS: weights, CONFIG: (tiny_checkpoint / CONFIG).read_bytes()})
    sha = sha256_bytes(weights)
    manifest = write_zoo(
        tmp_path / "zoo.toml",
        {
            "tiny-zoo": hub_entry(REPO, commit, sha),
            "tiny-wrong-hash": hub_entry(REPO, commit, "0" * 64),
            "tiny-missing-file": hub_entry(REPO, commit, sha, filename="other.safetensors"),
            "tiny-missing-repo": hub_entry("starft-test/absent", commit, sha),
            "tiny-missing-revision": hub_entry(REPO, "f" * 40, sha),
        },
    )
    monkeypatch.setenv("STARFT_ZOO", str(manifest))
    return types.SimpleNamespace(
        hub=hub, commit=commit, sha=sha, weights=weights, cache=Path(os.environ["HF_HUB_CACHE"])
    )


def _cache_files(cache: Path) -> list[Path]:
    """Blobs, snapshot links (dangling ones too) and partial downloads in a Hugging Face cache."""
    return sorted(
        p for p in cache.rglob("*") if (p.is_symlink() or p.is_file()) and {"blobs", "snapshots"} & set(p.parts)
    )


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_download_shows_progress_verifies_and_hits_the_cache(served) -> None:
    RecordingBar.instances.clear()
    entry = zoo.get_entry("tiny-zoo")
    path = zoo.fetch(entry, tqdm_class=RecordingBar)
    assert path.read_bytes() == served.weights
    assert path.is_relative_to(served.cache)
    bar = next(b for b in RecordingBar.instances if b.total == len(served.weights))
    assert bar.n == len(served.weights)
    gets = served.hub.file_requests(WEIGHTS, "GET")
    assert len(gets) == 1 and gets[0].headers["authorization"] == "Bearer hf_test_token"

    before = len(served.hub.requests)
    again = zoo.fetch(entry, tqdm_class=RecordingBar)
    assert again == path
    assert len(served.hub.requests) == before  # pinned commit + cached file: no request at all


def test_cli_download_prints_the_path_and_a_progress_bar(served, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub draws bars on a terminal only; TQDM_POSITION=-1 is its switch to draw them anyway.
    monkeypatch.setenv("TQDM_POSITION", "-1")
    result = runner.invoke(app, ["zoo", "download", "tiny-zoo"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.read_bytes() == served.weights
    assert "100%" in result.stderr and WEIGHTS in result.stderr
    assert runner.invoke(app, ["zoo", "path", "tiny-zoo"]).stdout.strip() == str(path)
    info = runner.invoke(app, ["zoo", "info", "tiny-zoo"])
    assert f"local file     {path}" in info.stdout


def test_offline_use_after_download_and_clear_error_before(served, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = zoo.get_entry("tiny-zoo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        zoo.fetch(entry)
    message = info.value.one_line()
    assert "not in the local cache" in message and "HF_HUB_OFFLINE is set" in message
    assert "starft zoo download tiny-zoo" in message
    assert served.hub.file_requests(WEIGHTS) == []

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = zoo.fetch(entry)
    served.hub.stop()  # the Hub is gone, and we are offline
    _go_offline(monkeypatch)
    assert zoo.fetch(entry) == path
    assert zoo.resolve(entry).weights == path


def test_checksum_mismatch_is_refused_and_the_file_deleted(served) -> None:
    entry = zoo.get_entry("tiny-wrong-hash")
    with pytest.raises(ChecksumError) as info:
        zoo.fetch(entry)
    message = info.value.one_line()
    assert f"expected sha256 {'0' * 64}" in message and f"got {served.sha}" in message
    assert "the file was deleted" in message
    assert _cache_files(served.cache) == []
    assert zoo.cached_path(entry) is None


def test_cli_checksum_mismatch_is_one_line(served) -> None:
    result = runner.invoke(app, ["zoo", "download", "tiny-wrong-hash"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: checksum mismatch for zoo model 'tiny-wrong-hash'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert served.sha in result.stderr


def test_interrupted_download_is_resumed(served, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE pieces (10 MB); smaller pieces let it keep part of the body.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    served.hub.drop[WEIGHTS] = 1  # the first GET sends half the file and hangs up
    path = zoo.fetch(zoo.get_entry("tiny-zoo"))
    assert path.read_bytes() == served.weights
    gets = served.hub.file_requests(WEIGHTS, "GET")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(served.weights) // 2  # resumed where the kept part ends, not from zero


def test_interrupted_small_download_is_restarted(served) -> None:
    served.hub.drop[WEIGHTS] = 1  # less than one 10 MB piece arrived: the client starts over
    path = zoo.fetch(zoo.get_entry("tiny-zoo"))
    assert path.read_bytes() == served.weights
    assert len(served.hub.file_requests(WEIGHTS, "GET")) == 2
    assert len(_cache_files(served.cache)) == 2  # one blob, one snapshot link: no partial file


def test_interrupted_download_fails_clearly_and_leaves_no_file(served, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as fd

    sleeps: list[float] = []
    monkeypatch.setattr(fd, "time", types.SimpleNamespace(sleep=sleeps.append))  # skip the 1 s retry pauses
    served.hub.drop[WEIGHTS] = -1  # every GET hangs up midway
    big = os.urandom(64)  # small file: few retries before no byte is left to make progress
    served.hub.commit(REPO, {"flaky.safetensors": big})
    commit = served.hub.repos[REPO].refs["main"]
    entry = zoo.validate_entry("flaky", hub_entry(REPO, commit, sha256_bytes(big), filename="flaky.safetensors"))
    served.hub.drop["flaky.safetensors"] = -1
    with pytest.raises(WeightsUnavailableError) as info:
        zoo.fetch(entry)
    message = info.value.one_line()
    assert message.startswith("download of zoo model 'flaky'") and "failed" in message
    assert "no partial file was kept" in message
    assert len(served.hub.file_requests("flaky.safetensors", "GET")) > 1 and sleeps
    assert _cache_files(served.cache) == []


@pytest.mark.parametrize(
    ("name", "what"),
    [("tiny-missing-file", "file"), ("tiny-missing-repo", "repository"), ("tiny-missing-revision", "revision")],
)
def test_wrong_manifest_entries_fail_with_a_clear_message(served, name: str, what: str) -> None:
    with pytest.raises(ZooError) as info:
        zoo.fetch(zoo.get_entry(name))
    assert f"{what} not found on the Hub" in info.value.one_line()


def test_classify_with_a_zoo_name_end_to_end(
    served,
    tiny_checkpoint: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
) -> None:
    image = make_image(tmp_path / "img.jpg", seed=3, color=(200, 40, 40))
    args = ["classify", str(image), "--labels", "red,blue", "--device", "cpu", "--format", "json"]
    by_name = runner.invoke(app, [*args, "--model", "tiny-zoo"])
    assert by_name.exit_code == 0, by_name.output
    local = runner.invoke(app, [*args, "--model", str(tiny_checkpoint)])
    assert local.exit_code == 0, local.output
    got, expected = json.loads(by_name.stdout), json.loads(local.stdout)
    assert [p["label"] for p in got[0]["predictions"]] == [p["label"] for p in expected[0]["predictions"]]
    for a, b in zip(got[0]["predictions"], expected[0]["predictions"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
    assert len(served.hub.file_requests(WEIGHTS, "GET")) == 1

    # Offline with the Hub gone, the zoo: form works from the cache.
    served.hub.stop()
    _go_offline(monkeypatch)
    offline = runner.invoke(app, [*args, "--model", "zoo:tiny-zoo"])
    assert offline.exit_code == 0, offline.output
    assert json.loads(offline.stdout)[0]["predictions"][0]["label"] == got[0]["predictions"][0]["label"]


def test_verify_detects_a_corrupted_cache_file_and_rm_deletes(served) -> None:
    assert runner.invoke(app, ["zoo", "verify"]).stdout.strip() == "no zoo model is downloaded"
    path = zoo.fetch(zoo.get_entry("tiny-zoo"))
    ok = runner.invoke(app, ["zoo", "verify", "tiny-zoo"])
    assert ok.exit_code == 0 and ok.stdout.strip() == f"tiny-zoo: ok sha256 {served.sha}"

    # 'tiny-wrong-hash' pins another hash for the same file: reported, but it must not delete tiny-zoo's file.
    shared = runner.invoke(app, ["zoo", "verify"])
    assert shared.exit_code == 1
    assert "tiny-wrong-hash: mismatch the manifest pins sha256 " + "0" * 64 in shared.stdout
    assert f"tiny-zoo: ok sha256 {served.sha}" in shared.stdout
    assert path.read_bytes() == served.weights

    blob = path.resolve()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"x" + served.weights[1:])  # same size, one byte changed
    bad = runner.invoke(app, ["zoo", "verify", "tiny-zoo"])
    assert bad.exit_code == 1
    assert bad.stdout.startswith("tiny-zoo: mismatch checksum mismatch")
    assert bad.stderr.startswith("error: 1 zoo model(s) failed verification: tiny-zoo. Mismatching files were deleted")
    assert not blob.exists() and not path.exists()

    # The next use downloads again; rm deletes it.
    path = zoo.fetch(zoo.get_entry("tiny-zoo"))
    result = runner.invoke(app, ["zoo", "rm", "tiny-zoo"])
    assert result.exit_code == 0 and f"deleted {path}" in result.stdout
    assert not path.exists() and zoo.cached_path(zoo.get_entry("tiny-zoo")) is None
    assert runner.invoke(app, ["zoo", "rm", "tiny-zoo"]).stdout.strip() == "tiny-zoo: nothing downloaded"
    missing = runner.invoke(app, ["zoo", "verify", "tiny-zoo"])
    assert missing.exit_code == 1 and "is not downloaded" in missing.stderr


def test_first_use_hashes_then_trusts_the_verified_record(served, monkeypatch: pytest.MonkeyPatch) -> None:
    from starft_cli.zoo import hub as zoo_hub

    calls: list[Path] = []
    real = zoo_hub.sha256_file
    monkeypatch.setattr(zoo_hub, "sha256_file", lambda p, *a: calls.append(Path(p)) or real(p, *a))
    entry = zoo.get_entry("tiny-zoo")
    zoo.fetch(entry)
    zoo.fetch(entry)
    assert len(calls) == 1  # hashed after download, not again while the file is unchanged


def test_open_clip_entry_download_prefetches_into_the_hub_cache(hub: HubServer) -> None:  # noqa: F811
    data = os.urandom(1000)
    hub.commit("timm/vit_base_patch16_clip_224.laion400m_e32", {"open_clip_model.safetensors": data})
    result = runner.invoke(app, ["zoo", "download", "vit-b-16-laion400m-e32"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.read_bytes() == data and "models--timm--vit_base_patch16_clip_224.laion400m_e32" in str(path)
    assert runner.invoke(app, ["zoo", "path", "vit-b-16-laion400m-e32"]).stdout.strip() == str(path)
    assert runner.invoke(app, ["zoo", "verify", "vit-b-16-laion400m-e32"]).stdout.startswith(
        "vit-b-16-laion400m-e32: unpinned"
    )


def test_open_clip_entry_download_offline_is_one_line(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _go_offline(monkeypatch)
    result = runner.invoke(app, ["zoo", "download", "vit-l-14-laion400m-e31"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not in the local cache" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "starft zoo download vit-l-14-laion400m-e31" in lines[0]
    assert hub.requests == []


def test_open_clip_entry_unreachable_hub_is_one_line(hub: HubServer) -> None:  # noqa: F811
    result = runner.invoke(app, ["zoo", "download", "vit-l-14-laion400m-e31"])  # the emulated Hub lacks the repo
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights for ViT-L-14:laion400m_e31")
    assert "HF_HUB_OFFLINE=1" in lines[0]


def test_classify_with_a_shipped_zoo_name_offline_fails_in_one_line(
    hub: HubServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _go_offline(monkeypatch)
    image = make_image(tmp_path / "img.jpg", seed=2)
    result = runner.invoke(app, ["classify", str(image), "--labels", "a,b", "--model", "vit-b-16-laion400m-e31"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights for ViT-B-16:laion400m_e31")
    assert "not in the local cache" in lines[0] and hub.requests == []


def test_url_source_download_is_verified_cached_and_atomic(served, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as fd

    from starft_cli.zoo.manifest import Source, ZooEntry

    # Manifests accept https only; the entry is built directly to run the URL code path against the local server.
    url = f"{served.hub.url}/{REPO}/resolve/{served.commit}/{WEIGHTS}"
    source = Source(kind="url", url=url, filename=WEIGHTS)
    entry = ZooEntry(
        name="by-url", arch="starft-tiny", source=source, kind="baseline", license="MIT", sha256=served.sha
    )
    path = zoo.fetch(entry)
    assert path.read_bytes() == served.weights and path.name == WEIGHTS
    assert path.is_relative_to(Path(os.environ["STARFT_HOME"]))
    before = len(served.hub.requests)
    assert zoo.fetch(entry) == path and len(served.hub.requests) == before
    assert zoo.remove(entry) == [path] and not path.exists()

    wrong = ZooEntry(name="by-url", arch="starft-tiny", source=source, kind="baseline", license="MIT", sha256="1" * 64)
    with pytest.raises(ChecksumError):
        zoo.fetch(wrong)
    assert not path.exists()

    monkeypatch.setattr(fd, "time", types.SimpleNamespace(sleep=lambda s: None))
    served.hub.drop[WEIGHTS] = -1
    with pytest.raises(WeightsUnavailableError) as info:
        zoo.fetch(entry)
    assert "no partial file was kept" in info.value.one_line()
    assert [p.name for p in path.parent.iterdir()] == []


def test_download_with_a_branch_revision_still_checks_the_hash(served) -> None:
    result = runner.invoke(app, ["zoo", "download", "tiny-zoo", "--revision", "main"])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).read_bytes() == served.weights
    assert f"/resolve/main/{WEIGHTS}" in served.hub.file_requests(WEIGHTS, "HEAD")[0].path
    wrong = runner.invoke(app, ["zoo", "download", "tiny-wrong-hash", "--revision", "main"])
    assert wrong.exit_code == 1 and "checksum mismatch" in wrong.stderr
    tag = runner.invoke(app, ["zoo", "download", "vit-b-16-laion400m-e31", "--revision", "main"])
    assert tag.exit_code == 2 and "--revision applies to Hub sources only" in tag.stderr


def test_unknown_architecture_is_refused_before_any_download(served) -> None:
    from starft_cli.errors import ModelNotFoundError

    entry = zoo.validate_entry("typo", hub_entry(REPO, served.commit, served.sha, arch="starft-tinny"))
    with pytest.raises(ModelNotFoundError) as info:
        zoo.resolve(entry)
    assert "unknown architecture 'starft-tinny'" in info.value.one_line()
    assert "Did you mean starft-tiny" in info.value.one_line()
    assert served.hub.requests == []


def test_rm_keeps_a_blob_that_another_entry_still_uses(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two revisions of one repository share the weights' blob in the Hub cache: removing one entry must leave the
    other usable offline; removing the second deletes the blob."""
    second = served.hub.commit(REPO, {"README.md": b"a card"})  # the weights unchanged: the same blob
    manifest = write_zoo(
        tmp_path / "two.toml",
        {"tiny-one": hub_entry(REPO, served.commit, served.sha), "tiny-two": hub_entry(REPO, second, served.sha)},
    )
    monkeypatch.setenv("STARFT_ZOO", str(manifest))
    one, two = zoo.fetch(zoo.get_entry("tiny-one")), zoo.fetch(zoo.get_entry("tiny-two"))
    assert one != two and one.resolve() == two.resolve()
    blob = one.resolve()

    result = runner.invoke(app, ["zoo", "rm", "tiny-one"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"deleted {one}"  # the link only
    assert not one.exists() and not one.parent.exists()  # the emptied snapshot goes too
    _go_offline(monkeypatch)
    assert zoo.cached_path(zoo.get_entry("tiny-two")) == two and two.read_bytes() == served.weights
    assert runner.invoke(app, ["zoo", "verify", "tiny-two"]).stdout.startswith("tiny-two: ok")

    result = runner.invoke(app, ["zoo", "rm", "tiny-two"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["deleted", str(two), "deleted", str(blob)]
    assert not blob.exists()
