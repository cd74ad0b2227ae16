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
    assert (c.backbone, c.method, c.pool, c.reg_lambda, c.lambda_schedule) == (
        "ViT-B-16",
        "starft",
        "background",
        0.5,
        "linear",
    )
    assert (c.lr, c.wd, c.batch_size, c.epochs, c.warmup, c.seed) == (1e-5, 0.1, 512, 10, 500, 0)
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


def test_linear_step_schedule_and_zero_counts():
    from starft_cli.train.schedules import zero_lambda_steps

    assert [reg_lambda(0, 1, 0.5, "linear-step", s, 4) for s in range(4)] == pytest.approx([0.5, 0.375, 0.25, 0.125])
    assert reg_lambda(3, 10, 0.5, "linear-step", 0, 100) == 0.5  # per step: the epoch does not matter
    assert zero_lambda_steps("linear", 0.5, 1, 8, 8) == 8  # --epochs 1: FLYP throughout
    assert zero_lambda_steps("linear", 0.5, 2, 3, 6) == 3
    assert zero_lambda_steps("linear", 0.5, 10, 5, 50) == 5
    assert zero_lambda_steps("linear-step", 0.5, 1, 8, 8) == 0
    assert zero_lambda_steps("constant", 0.5, 1, 8, 8) == 0
    with pytest.raises(ValueError, match="unknown lambda schedule"):
        reg_lambda(0, 1, 0.5, "cosine")


def _warnings(**changes):
    from starft_cli.train.schedules import schedule_warnings

    args = dict(reg="star", schedule="linear", base_lambda=0.5, epochs=10, steps_per_epoch=100, total_steps=1000)
    return schedule_warnings(**{**args, "warmup": 500, "lr": 1e-5, **changes})


def test_schedule_warnings():
    assert _warnings() == []  # the paper's recipe
    (one,) = _warnings(epochs=1, steps_per_epoch=1000)
    assert one.startswith("--lambda-schedule linear leaves the regulariser weight at 0 for 1000 of the run's 1000")
    assert "--epochs 1" in one and "linear-step" in one and "constant" in one
    assert _warnings(epochs=2, steps_per_epoch=500)[0].count("500 of the run's 1000 steps") == 1
    assert _warnings(epochs=1, steps_per_epoch=1000, schedule="linear-step") == []
    assert _warnings(epochs=1, steps_per_epoch=1000, reg="none") == []
    assert _warnings(epochs=1, steps_per_epoch=1000, base_lambda=0.0) == []
    (warm,) = _warnings(total_steps=8, steps_per_epoch=8, epochs=1, schedule="constant")
    assert warm == (
        "warm-up of 500 steps is longer than the run's 8 steps: the learning rate never reaches --lr 1e-05 "
        "(it peaks at 1.6e-07). Lower --warmup"
    )
    (equal,) = _warnings(total_steps=500, steps_per_epoch=50, warmup=500)
    assert "lasts the whole 500-step run" in equal


def test_cli_warns_about_a_one_epoch_starft_run(tmp_path, class_folders):
    from typer.testing import CliRunner

    from starft_cli.cli.app import app

    args = ["finetune", "--backbone", "starft-tiny:none", "--workers", "0", "--device", "cpu", "--epochs", "1"]
    args += ["--data", f"folder:{class_folders}", "--batch-size", "6", "--warmup", "5", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: --lambda-schedule linear leaves the regulariser weight at 0 for 2 of the run's 2 steps" in (
        result.stderr
    )
    assert "warning: warm-up of 5 steps is longer than the run's 2 steps" in result.stderr
    again = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "s"), "--lambda-schedule", "linear-step"])
    assert again.exit_code == 0 and "regulariser weight at 0" not in again.stderr
    import json

    lams = [json.loads(line)["lambda"] for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert lams == pytest.approx([0.5, 0.25])


def test_method_tables_and_hp_flags(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('method = "l2-sp"\n[l2-sp]\nalpha = 0.02\n[lp-ft]\nlp_lr = 0.5\n')
    c = build_config({}, path)
    assert (c.method, c.hparams) == ("l2-sp", {"alpha": 0.02, "beta": 0.0})  # the other table is for lp-ft
    c = build_config({"hparams": {"beta": "0.3"}}, path)  # flags add to (and win over) the table
    assert c.hparams == {"alpha": 0.02, "beta": 0.3}
    c = build_config({"method": "lp-ft"}, path)
    assert c.hparams == {"lp_fraction": 0.5, "lp_lr": 0.5}
    assert json.loads(c.to_json())["hparams"] == {"lp_fraction": 0.5, "lp_lr": 0.5}
    bad = tmp_path / "bad.toml"
    bad.write_text("[l2sp]\nalpha = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown table \[l2sp\]") as info:
        build_config({}, bad)
    assert info.value.hint == "Did you mean 'l2-sp'?"


def test_lambda_defaults_to_the_methods_and_is_refused_where_unused():
    assert build_config({}).reg_lambda == 0.5
    assert build_config({"method": "flyp"}).reg_lambda == 0.0
    with pytest.raises(ConfigError, match="--lambda has no effect with --method lp"):
        build_config({"method": "lp", "reg_lambda": 0.1})
    with pytest.raises(ConfigError, match="--pool has no effect with --method ft"):
        build_config({"method": "ft", "pool": "texture"})


def test_deprecated_reg_and_loss_map_to_methods(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        assert build_config({"reg": "none"}).method == "flyp"
        assert build_config({"reg": "kl"}).method == "kl"
        assert build_config({"loss": "ce", "reg": "none"}).method == "ft"
    assert "--reg none is deprecated" in caplog.text and "use --method flyp" in caplog.text
    with pytest.raises(ConfigError, match="contradicts"):
        build_config({"method": "starft", "reg": "none"})


def test_a_02_run_config_resumes_as_its_method(tmp_path: Path):
    from starft_cli.train.config import config_for_run

    run = tmp_path / "run"
    run.mkdir()
    old = {**TrainConfig(data="folder:x", out=str(run)).to_dict(), "reg": "none", "loss": "contrastive"}
    del old["method"], old["hparams"]
    (run / "config.json").write_text(json.dumps(old))
    c = config_for_run({"out": str(run), "workers": 1}, resume=True)
    assert (c.method, c.resume, c.workers) == ("flyp", True, 1)
    with pytest.raises(ConfigError, match="--method"):
        config_for_run({"out": str(run), "method": "starft"}, resume=True)
    with pytest.raises(ConfigError, match="flyp has no hyper-parameter 'alpha'"):
        config_for_run({"out": str(run), "hparams": {"alpha": "1"}}, resume=True)
    (run / "config.json").write_text(TrainConfig(data="folder:x", out=str(run), method="l2-sp").to_json())
    assert config_for_run({"out": str(run), "hparams": {"alpha": "0.1"}}, resume=True).hparams["alpha"] == 0.1
    with pytest.raises(ConfigError, match=r"--hp \(\{'alpha': 0.1"):
        config_for_run({"out": str(run), "hparams": {"alpha": "1"}}, resume=True)


def test_a_finetune_table_keeps_the_method_table(tmp_path: Path):
    """Issue 19 item 3: `method` under [finetune] and a top-level [l2-sp] table: alpha 0.5, not the default 0.1."""
    path = tmp_path / "c.toml"
    path.write_text('[finetune]\nmethod = "l2-sp"\ndata = "folder:x"\n[l2-sp]\nalpha = 0.5\n')
    c = build_config({}, path)
    assert (c.method, c.data, c.hparams) == ("l2-sp", "folder:x", {"alpha": 0.5, "beta": 0.0})
    assert json.loads(c.to_json())["hparams"]["alpha"] == 0.5


def test_one_precedence_for_every_source(tmp_path: Path):
    """flags > [finetune] > top level; --hp > hp table > [METHOD] inside [finetune] > [METHOD] at top level."""
    path = tmp_path / "c.toml"
    path.write_text(
        'method = "l2-sp"\nepochs = 3\nlr = 0.5\nbatch-size = 16\n'
        "[finetune]\nepochs = 4\nlr = 0.25\nhp = {beta = 0.75}\n[finetune.l2-sp]\nalpha = 0.125\nbeta = 0.5\n"
        "[l2-sp]\nalpha = 0.375\n"
    )
    c = build_config({"lr": 2.0}, path)
    assert (c.epochs, c.lr, c.batch_size) == (4, 2.0, 16)
    assert c.hparams == {"alpha": 0.125, "beta": 0.75}
    assert build_config({"lr": 2.0, "hparams": {"beta": "1"}}, path).hparams == {"alpha": 0.125, "beta": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('epochs = "two"\n', "c.toml: 'epochs' must be a whole number (got 'two', text)"),
        ('[finetune]\nlr = "1e-5"\n', "c.toml [finetune]: 'lr' must be a number (got '1e-5', text)"),
        ("freeze-text = 1\n", "c.toml: 'freeze-text' must be true or false (got 1, a whole number)"),
        ("batch-size = 8.0\n", "c.toml: 'batch-size' must be a whole number (got 8.0, a number)"),
        ("data = 3\n", "c.toml: 'data' must be text (got 3, a whole number)"),
        ("lr = inf\n", "c.toml: 'lr' must be a finite number (got inf)"),
        ("wd = nan\n", "c.toml: 'wd' must be a finite number (got nan)"),
        ("[flyp]\nalpha = 1\n", "flyp has no hyper-parameter 'alpha' (it has: captions)"),
        ("[finetune.other]\nx = 1\n", "c.toml [finetune]: unknown table [other]"),
        ("[finetune]\nepoch = 1\n", "c.toml [finetune]: unknown setting 'epoch'"),
        ("finetune = 3\n", "c.toml: 'finetune' must be a table ([finetune]), not a value"),
    ],
)
def test_a_bad_toml_value_names_the_key_and_the_type(tmp_path: Path, text: str, message: str):
    """Issue 20 item 2: `epochs = "two"` is one line naming the key and the type it must have."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_config({}, path)
    assert str(info.value).replace(str(tmp_path) + "/", "") == message


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("name", ["lr", "wd", "reg_lambda"])
def test_every_float_option_refuses_non_finite_values(name: str, value: float):
    """Issue 20 item 11: `--lr inf` was accepted (and diverged at step 2)."""
    flag = {"reg_lambda": "lambda"}.get(name, name)
    with pytest.raises(ConfigError, match=f"^--{flag} must be a finite number \\(got {value}\\)$"):
        build_config({name: value})
    with pytest.raises(ConfigError, match=f"--{flag} must be a finite number"):
        TrainConfig(**{name: value})


def test_a_bad_value_is_named_before_a_missing_companion():
    """Issue 20 item 11: `--select-by nope` without --val-data names the bad value first."""
    with pytest.raises(ConfigError, match="--select-by 'nope' is not one of top1, worst_group_acc, mean_group_acc"):
        build_config({"select_by": "nope"})
    with pytest.raises(ConfigError, match="--select-by is given without --val-data"):
        build_config({"select_by": "top1"})


def test_resume_reads_the_config_file_too(tmp_path: Path):
    from starft_cli.train.config import config_for_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(data="folder:x", out=str(run), epochs=3).to_json())
    path = tmp_path / "c.toml"
    path.write_text("[finetune]\nworkers = 1\n")
    assert config_for_run({"out": str(run)}, path, resume=True).workers == 1
    path.write_text("[finetune]\nepochs = 5\n")
    with pytest.raises(ConfigError, match=r"--epochs \(3 in the run, 5 given\)"):
        config_for_run({"out": str(run)}, path, resume=True)
