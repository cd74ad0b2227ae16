"""Every cache (zero-shot heads, eval features, the spurious text bank) is keyed by the full model identity.

Two folders hold the same weights, one with ``"quick_gelu": true`` in its open_clip_config.json: with one shared
cache, each model's numbers equal an uncached computation of that model, in either order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import WrongArchitectureError
from starft_cli.models import CONFIG_NAME, WEIGHTS_NAME, load, model_identity, save_checkpoint
from starft_cli.zeroshot import classify, zero_shot_head

LABELS = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]


@pytest.fixture
def twins(tmp_path: Path, tiny) -> tuple[Path, Path]:
    """The tiny model's weights saved twice: plain, and with quick_gelu in the sidecar config."""
    plain, quick = tmp_path / "plain", tmp_path / "quick"
    save_checkpoint(tiny.model, plain, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    save_checkpoint(tiny.model, quick, {**tiny.model_cfg, "quick_gelu": True}, tiny.preprocess_cfg)
    return plain, quick


def _uncached_probs(loaded, images: list[Path]) -> torch.Tensor:
    from starft_cli.images import open_image

    head = zero_shot_head(loaded.model, loaded.tokenizer, LABELS, TEMPLATES)
    with torch.inference_mode():
        batch = torch.stack([loaded.preprocess(open_image(p)) for p in images])
        feats = loaded.model.encode_image(batch, normalize=True).float()
        return (feats @ head.T).softmax(dim=-1)


def _cached_probs(loaded, images: list[Path]) -> torch.Tensor:
    results = classify(images, LABELS, model=loaded, templates=TEMPLATES)
    rows = [{p["label"]: p["probability"] for p in r["predictions"]} for r in results]
    return torch.tensor([[row[x] for x in LABELS] for row in rows])


@pytest.mark.parametrize("order", [("plain", "quick"), ("quick", "plain")])
def test_quick_gelu_twins_do_not_share_cached_heads(twins, images, starft_home: Path, order) -> None:
    folders = dict(zip(("plain", "quick"), twins, strict=True))
    models = {name: load(str(folders[name])) for name in order}
    assert models["plain"].fingerprint == models["quick"].fingerprint  # the same weights
    assert model_identity(models["plain"]) != model_identity(models["quick"])
    got = {name: _cached_probs(models[name], images) for name in order}  # one shared cache (STARFT_HOME)
    assert len(list((starft_home / "cache" / "heads").glob("*.safetensors"))) == 2
    for name in order:
        torch.testing.assert_close(got[name], _uncached_probs(models[name], images), rtol=0, atol=1e-6)
    assert not torch.allclose(got["plain"], got["quick"], atol=1e-6)  # quick_gelu does change the numbers


def test_quick_gelu_twins_do_not_share_cached_features(twins, tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["a", "b"], per_class=2, size=(32, 32))
    ds = load_dataset(f"folder:{root}")
    for first, second in ((0, 1), (1, 0)):
        models = [load(str(twins[first])), load(str(twins[second]))]
        for loaded in models:
            ours = compute_features(loaded, ds)
            with torch.inference_mode():
                batch = torch.stack([loaded.preprocess(ds.get_image(i)) for i in range(len(ds))])
                plain = loaded.model.encode_image(batch, normalize=True)
            torch.testing.assert_close(ours.features, plain, rtol=0, atol=1e-5)


def test_quick_gelu_twins_do_not_share_the_spurious_bank(twins) -> None:
    from starft_cli.models import weights_fingerprint
    from starft_cli.train.bank import build_bank, cached_bank

    cpu = torch.device("cpu")
    pool = ["{} at night."]
    for loaded in (load(str(twins[0])), load(str(twins[1]))):
        teacher = __import__("copy").deepcopy(loaded.model)  # the training loop keys the bank on a copy
        bank = cached_bank(teacher, loaded.tokenizer, weights_fingerprint(teacher), LABELS, "a {}.", pool, cpu)
        fresh = build_bank(loaded.model, loaded.tokenizer, LABELS, "a {}.", pool, cpu)
        torch.testing.assert_close(bank.spurious, fresh.spurious, rtol=0, atol=1e-6)


def test_identity_covers_preprocessing_tokenizer_and_device(tiny) -> None:
    import copy

    base = model_identity(tiny)
    assert model_identity(tiny) == base  # stable
    other_pp = copy.copy(tiny)
    other_pp.preprocess_cfg = {**tiny.preprocess_cfg, "interpolation": "bilinear"}
    assert model_identity(other_pp) != base
    import open_clip

    other_tok = copy.copy(tiny)
    other_tok.tokenizer = open_clip.SimpleTokenizer(context_length=16)
    assert model_identity(other_tok) != base
    assert model_identity(tiny, device="cuda") != base  # identity only; nothing runs on CUDA
    # a bare module (a frozen teacher) has the same identity as the LoadedModel it came from
    assert model_identity(tiny.model, tiny.tokenizer, device="cpu") == base


def test_arch_conflicting_with_the_sidecar_config_is_refused(twins, tmp_path: Path) -> None:
    small = load("starft-small:none")
    save_checkpoint(small.model, tmp_path / "small", small.model_cfg, small.preprocess_cfg, arch="starft-small")
    with pytest.raises(WrongArchitectureError) as info:
        load(str(tmp_path / "small" / WEIGHTS_NAME), arch="starft-tiny")
    message = info.value.one_line()  # the Python API names the argument, the CLI the flag
    assert "`arch` starft-tiny" in message and "'starft-small'" in message and "Drop `arch`" in message
    from starft_cli.cli.flags import error_line

    shown = error_line(info.value)
    assert "--arch starft-tiny" in shown and "'starft-small'" in shown and "Drop --arch" in shown
    # a config without an arch name that differs from --arch names the differing keys
    with pytest.raises(WrongArchitectureError, match=r"differs in: quick_gelu"):
        load(str(twins[1]), arch="starft-tiny")
    # an agreeing --arch is allowed, and the sidecar (with its preprocessing) is what loads
    agreeing = load(str(twins[0]), arch="starft-tiny")
    assert agreeing.arch == "starft-tiny"


def test_arch_conflict_is_a_one_line_cli_error(twins, images) -> None:
    result = CliRunner().invoke(
        app, ["classify", str(images[0]), "-m", str(twins[1]), "--arch", "starft-tiny", "--labels", "a,b"]
    )
    assert result.exit_code == 1, result.output
    assert "error: --arch starft-tiny conflicts with" in result.output and CONFIG_NAME in result.output
    assert "Traceback" not in result.output


def test_sidecar_written_by_plain_open_clip_is_read(twins) -> None:
    """A config with only model_cfg (as open_clip writes it) equal to --arch's loads."""
    config = json.loads((twins[0] / CONFIG_NAME).read_text())
    del config["arch"]
    (twins[0] / CONFIG_NAME).write_text(json.dumps(config))
    assert load(str(twins[0]), arch="starft-tiny").fingerprint == load(str(twins[0])).fingerprint
