from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from starft_cli.errors import (
    CheckpointError,
    ModelNotFoundError,
    UsageError,
    WrongArchitectureError,
)
from starft_cli.models import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load,
    parse_model_ref,
    read_state_dict,
    save_checkpoint,
    weights_fingerprint,
)
from starft_cli.zeroshot import classify

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("ref", "kind", "arch", "tag"),
    [
        ("ViT-B-16", "pretrained", "ViT-B-16", "laion400m_e31"),
        ("ViT-L-14", "pretrained", "ViT-L-14", "laion400m_e31"),
        ("ViT-B-16:laion400m_e32", "pretrained", "ViT-B-16", "laion400m_e32"),
        ("ViT-B-16:none", "pretrained", "ViT-B-16", "none"),
        ("starft-tiny", "pretrained", "starft-tiny", "none"),
        ("starft-small:none", "pretrained", "starft-small", "none"),
    ],
)
def test_parse_architecture_forms(ref: str, kind: str, arch: str, tag: str) -> None:
    parsed = parse_model_ref(ref)
    assert (parsed.kind, parsed.arch, parsed.tag) == (kind, arch, tag)


def test_parse_hub_forms() -> None:
    plain = parse_model_ref("hf-hub:org/name")
    pinned = parse_model_ref("hf-hub:org/name@abc123")
    assert (plain.kind, plain.repo, plain.revision) == ("hf-hub", "org/name", None)
    assert (pinned.repo, pinned.revision) == ("org/name", "abc123")


@pytest.mark.parametrize(
    ("ref", "error", "needle"),
    [
        ("ViT-B-61", ModelNotFoundError, "Did you mean ViT-B-16"),
        ("ViT-B-16:", UsageError, "empty pretrained tag"),
        ("hf-hub:noslash", UsageError, "hf-hub:ORG/NAME"),
        ("./missing/weights.safetensors", ModelNotFoundError, "no such file"),
        ("", UsageError, "empty model reference"),
    ],
)
def test_parse_errors(ref: str, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=None) as info:
        parse_model_ref(ref)
    assert needle in info.value.one_line()


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        load("ViT-B-16:laion400m_e99")
    assert "laion400m_e31" in info.value.one_line()


def test_random_init_is_deterministic_for_a_seed(tiny) -> None:
    again = load("starft-tiny:none")
    other = load("starft-tiny:none", seed=1)
    assert weights_fingerprint(again.model) == tiny.fingerprint
    assert weights_fingerprint(other.model) != tiny.fingerprint
    for a, b in zip(tiny.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _probs(model, images) -> list[list[float]]:
    results = classify(images, ["red", "green", "blue"], model=model, templates="single")
    return [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["label"])] for r in results]


def test_every_reference_form_gives_identical_probabilities(tmp_path: Path, tiny, images) -> None:
    """arch:none, bare safetensors + --arch, safetensors with sidecar, .pt with module.model. prefixes, a folder."""
    expected = _probs(tiny, images)
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}

    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(bare))

    folder = tmp_path / "folder"
    save_checkpoint(tiny.model, folder, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")

    prefixed = tmp_path / "dp" / "checkpoint.pt"
    prefixed.parent.mkdir()
    torch.save({"epoch": 3, "state_dict": {f"module.model.{k}": v for k, v in state.items()}}, prefixed)

    forms = [
        load(str(bare), arch="starft-tiny"),
        load(str(folder / WEIGHTS_NAME)),  # sidecar open_clip_config.json
        load(str(prefixed), arch="starft-tiny"),
        load(str(folder)),
        load(f"local-dir:{folder}"),
    ]
    for loaded in forms:
        assert loaded.fingerprint == tiny.fingerprint
        assert _probs(loaded, images) == expected


def test_saved_folder_loads_with_plain_open_clip(tmp_path: Path, tiny) -> None:
    import open_clip

    save_checkpoint(tiny.model, tmp_path, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["arch"] == "starft-tiny" and "model_cfg" in config
    model, _, _ = open_clip.create_model_and_transforms("starft-tiny", pretrained=str(tmp_path / WEIGHTS_NAME))
    assert weights_fingerprint(model) == tiny.fingerprint
    plain = open_clip.create_model(f"local-dir:{tmp_path}")
    assert weights_fingerprint(plain) == tiny.fingerprint


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    small = load("starft-small:none")
    save_checkpoint(small.model, tmp_path, small.model_cfg, small.preprocess_cfg, arch="starft-small")
    (tmp_path / CONFIG_NAME).unlink()  # bare weights: nothing says which architecture they are
    with pytest.raises(WrongArchitectureError) as info:
        load(str(tmp_path / WEIGHTS_NAME), arch="starft-tiny")
    message = info.value.one_line()
    assert "do not fit starft-tiny; the file looks like starft-small" in message and "wrong shape" in message


def test_weights_without_architecture_ask_for_arch(tmp_path: Path, tiny) -> None:
    path = tmp_path / "w.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(UsageError) as info:
        load(str(path))
    assert "Pass `arch`" in info.value.one_line() and info.value.params == ("arch",)  # the CLI shows --arch


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Path("/")}, path)  # not loadable with weights_only
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "no pickled objects" in info.value.one_line()


def _write_hf_cache(hf_home: Path, repo: str, files: dict[str, Path], ref_end: str = "") -> None:
    """Lay files out as huggingface_hub's cache does: blobs, a snapshot of links, refs/main (followed by
    ``ref_end``)."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit + ref_end)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    import hashlib

    for name, source in files.items():
        data = source.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_pretrained_tag_loads_offline_from_the_hf_cache(tmp_path: Path, tiny) -> None:
    """The same code path that fetches laion400m_e31 (open_clip's pretrained config -> hub download) reads a
    tiny model's weights from a Hugging Face cache with HF_HUB_OFFLINE=1."""
    source = tmp_path / "src"
    save_checkpoint(tiny.model, source, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    hf_home = tmp_path / "hf"
    _write_hf_cache(hf_home, "starft-test/tiny-weights", {"open_clip_model.safetensors": source / WEIGHTS_NAME})
    code = (
        "from starft_cli.pretrained import register_pretrained\n"
        "from starft_cli.models import load\n"
        "register_pretrained('starft-tiny', 'cached', hf_hub='starft-test/tiny-weights/')\n"
        "print(load('starft-tiny:cached').fingerprint)\n"
    )
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "STARFT_HOME": str(tmp_path / "home")}
    done = _run(code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == tiny.fingerprint

    _write_hf_cache(
        hf_home,
        "starft-test/tiny-dir",
        {"open_clip_model.safetensors": source / WEIGHTS_NAME, CONFIG_NAME: source / CONFIG_NAME},
    )
    hub = _run("from starft_cli.models import load\nprint(load('hf-hub:starft-test/tiny-dir').fingerprint)\n", env)
    assert hub.returncode == 0, hub.stderr
    assert hub.stdout.strip() == tiny.fingerprint


def test_missing_weights_offline_say_where_and_how(tmp_path: Path, images) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "STARFT_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "starft_cli", "classify", str(images[0]), "--labels", "a,b", "--model", "ViT-B-16"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ViT-B-16:laion400m_e31" in lines[0]
    assert str(tmp_path / "hf") in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0] and "HF_HOME" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_ref_file_ending_with_a_newline_names_the_cached_snapshot(tmp_path: Path, tiny) -> None:
    """refs/main written with a trailing newline (by hand, or by another tool): still the cached snapshot, offline,
    for a Hub model and for a pretrained tag served from the Hub (issue 20, item 9)."""
    source = tmp_path / "src"
    save_checkpoint(tiny.model, source, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    hf_home = tmp_path / "hf"
    files = {WEIGHTS_NAME: source / WEIGHTS_NAME, CONFIG_NAME: source / CONFIG_NAME}
    _write_hf_cache(hf_home, "starft-test/newline", files, ref_end="\n")
    code = (
        "from starft_cli.pretrained import register_pretrained\n"
        "from starft_cli.models import load\n"
        "register_pretrained('starft-tiny', 'cached', hf_hub='starft-test/newline/')\n"
        "print(load('hf-hub:starft-test/newline').fingerprint, load('starft-tiny:cached').fingerprint)\n"
    )
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "STARFT_HOME": str(tmp_path / "home")}
    done = _run(code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [tiny.fingerprint, tiny.fingerprint]


def test_a_checkpoint_whose_image_tower_alone_was_compiled_loads(tmp_path: Path, tiny) -> None:
    """torch.compile of the image tower alone writes keys ``visual._orig_mod.*``: the segment is dropped wherever it
    is in a key (issue 20, item 9)."""
    state = {(f"visual._orig_mod.{k[len('visual.') :]}" if k.startswith("visual.") else k): v
             for k, v in tiny.model.state_dict().items()}  # fmt: skip
    assert any("._orig_mod." in k for k in state)
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "compiled.pt")
    assert load(str(tmp_path / "compiled.pt"), arch="starft-tiny").fingerprint == tiny.fingerprint


def test_a_run_directory_as_a_model_points_to_its_checkpoints(tmp_path: Path, tiny, images) -> None:
    from typer.testing import CliRunner

    from starft_cli.cli.app import app
    from starft_cli.errors import ModelNotFoundError

    run = tmp_path / "runs" / "x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError) as info:
        load(str(run))
    assert info.value.one_line() == (
        f"no weights file in {run}. {run} is a run directory without a finished checkpoint yet "
        "(checkpoints/best or last)"
    )
    for name in ("last", "best"):
        save_checkpoint(tiny.model, run / "checkpoints" / name, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    result = CliRunner().invoke(app, ["classify", str(images[0]), "-l", "a,b", "-m", str(run)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no weights file in {run}. {run} is a run directory: pass its checkpoint, "
        f"{run / 'checkpoints' / 'best'} or {run / 'checkpoints' / 'last'}\n"
    )
