"""The config dataclass, its sources, and the schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from starft_cli.errors import ConfigError
from starft_cli.train.config import TrainConfig, build_config, merge_for_resume
from starft_cli.train.schedules import cosine_lr, reg_lambda


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.backbone, c.reg, c.pool, c.reg_lambda, c.lambda_schedule) == (
        "ViT-B-16",
        "star",
        "background",
        0.5,
        "linear",
    )
    assert (c.lr, c.wd, c.batch_size, c.epochs, c.warmup, c.seed, c.loss) == (1e-5, 0.1, 512, 10, 500, 0, "contrastive")
    assert not c.freeze_text and c.precision == "fp32"


def test_toml_then_flags(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[finetune]\ndata = "folder:x"\nlambda = 0.3\nbatch-size = 64\nepochs = 4\n')
    c = build_config({"epochs": 2, "lr": None}, path)
    assert (c.data, c.reg_lambda, c.batch_size, c.epochs, c.lr) == ("folder:x", 0.3, 64, 2, 1e-5)
    assert json.loads(c.to_json())["config_file"] == str(path)


def test_unknown_toml_key_names_the_close_match(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'") as info:
        build_config({}, path)
    assert "epochs" in (info.value.hint or "")


def test_resume_keeps_the_stored_settings():
    stored = TrainConfig(data="folder:x", epochs=3, out="run")
    merged = merge_for_resume(stored, {"workers": 1, "epochs": 3, "out": "run", "device": "cpu"})
    assert merged.resume and merged.workers == 1 and merged.epochs == 3 and merged.device == "cpu"
    with pytest.raises(ConfigError, match="--epochs"):
        merge_for_resume(stored, {"epochs": 5})


def test_cosine_schedule_with_warmup():
    assert cosine_lr(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert cosine_lr(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert cosine_lr(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert cosine_lr(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert cosine_lr(20, 1.0, 4, 20) == pytest.approx(0.0)


def test_lambda_schedules():
    assert [reg_lambda(e, 10, 0.5) for e in (0, 4, 9)] == pytest.approx([0.45, 0.25, 0.0])
    assert reg_lambda(9, 10, 0.5, "constant") == 0.5
