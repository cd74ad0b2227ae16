"""WiSE-FT interpolation: the function, the command, and loading its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import WrongArchitectureError
from starft_cli.models import load, save_checkpoint
from starft_cli.wise import wise


def test_wise_interpolates_every_float_tensor():
    a = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([4.0, 6.0]), "b": torch.tensor([3.0])}
    mid = wise(a, b, 0.25)
    assert torch.equal(mid["w"], torch.tensor([1.0, 3.0])) and torch.equal(mid["b"], torch.tensor([1.5]))
    assert torch.equal(wise(a, b, 0.0)["w"], a["w"]) and torch.equal(wise(a, b, 1.0)["w"], b["w"])


def test_wise_refuses_different_architectures():
    with pytest.raises(WrongArchitectureError):
        wise({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
    with pytest.raises(WrongArchitectureError):
        wise({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5)


def test_wise_command_writes_loadable_models(tmp_path: Path):
    zs = load("starft-tiny:none", seed=0)
    ft = load("starft-tiny:none", seed=1)
    save_checkpoint(ft.model, tmp_path / "ft", ft.model_cfg, ft.preprocess_cfg, arch="starft-tiny")
    out = tmp_path / "wise"
    result = CliRunner().invoke(
        app, ["wise", "--zero-shot", "starft-tiny:none", "--fine-tuned", str(tmp_path / "ft"), "--alpha", "0,0.5,1",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "alpha_0"), str(out / "alpha_0.5"), str(out / "alpha_1")]
    half = load(str(out / "alpha_0.5")).model.state_dict()
    z, f = zs.model.state_dict(), ft.model.state_dict()
    for key in z:
        torch.testing.assert_close(half[key], (z[key] + f[key]) / 2)
    assert all(torch.equal(load(str(out / "alpha_0")).model.state_dict()[k], z[k]) for k in z)
    meta = json.loads((out / "alpha_0.5" / "open_clip_config.json").read_text())["starft"]
    assert meta["method"] == "wise-ft" and meta["alpha"] == 0.5


def test_wise_command_refuses_another_architecture_and_bad_alphas(tmp_path: Path):
    small = load("starft-small:none")
    save_checkpoint(small.model, tmp_path / "small", small.model_cfg, small.preprocess_cfg, arch="starft-small")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "wise",
            "--zero-shot",
            "starft-tiny:none",
            "--fine-tuned",
            str(tmp_path / "small"),
            "--out",
            str(tmp_path / "w"),
        ],
    )
    assert result.exit_code == 1 and "different architectures" in result.stderr
    bad = runner.invoke(app, ["wise", "--zero-shot", "a", "--fine-tuned", "b", "--alpha", "0,1.5"])
    assert bad.exit_code == 2 and "outside 0..1" in bad.stderr
