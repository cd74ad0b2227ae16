"""`starft finetune` end to end on generated data: run directory, checkpoints, config, data layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders

runner = CliRunner()
FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "2", "--lr", "1e-4", "--device", "cpu"]


def _finetune(*args: str):
    return runner.invoke(app, ["finetune", *FAST, *args])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_finetune_folder_writes_the_run_directory(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    result = _finetune("--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "2", "--out", str(run))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(run))
    assert "6 steps" in result.stderr and "step 1/6 epoch 0 loss" in result.stderr  # plain progress lines
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "starft" and config["pool"] == "background" and config["epochs"] == 2
    assert config["batch_size"] == 4 and config["wd"] == 0.1  # METHOD.md default kept
    records = [r for r in _metrics(run) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))  # 12 images / 4 = 3 steps x 2 epochs
    for key in ("step", "epoch", "loss", "contrastive", "reg", "lambda", "lr", "images_per_s"):
        assert key in records[0]
    assert [r["lambda"] for r in records] == [0.25] * 3 + [0.0] * 3  # 0.5 * (1 - (e + 1) / 2)
    assert all(r["reg"] > -1e-6 for r in records[:3]) and records[2]["reg"] > 0
    assert all(r["reg"] is None for r in records[3:])  # weight 0: skipped, not computed
    assert records[0]["lr"] == pytest.approx(5e-5)  # warm-up step 1 of 2
    last = run / "checkpoints" / "last"
    assert {p.name for p in last.iterdir()} == {
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "training_state.pt",
    }
    meta = json.loads((last / "open_clip_config.json").read_text())["starft"]
    assert meta["method"] == "starft" and meta["base_model"] == "starft-tiny:none" and meta["step"] == 6
    state = torch.load(last / "training_state.pt", weights_only=True)
    assert state["step"] == 6 and state["epoch"] == 2
    assert not list((run / "checkpoints").glob(".*"))  # no partial or old folder left behind


def test_checkpoint_loads_with_plain_open_clip_and_starft(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    assert (
        _finetune(
            "--data", f"folder:{class_folders}", "--batch-size", "6", "--epochs", "1", "--out", str(run)
        ).exit_code
        == 0
    )
    last = run / "checkpoints" / "last"
    import open_clip

    from starft_cli.models import load, register_builtin_configs

    register_builtin_configs()
    model, _, _ = open_clip.create_model_and_transforms(
        "starft-tiny", pretrained=str(last / "open_clip_model.safetensors")
    )
    saved = load_file(str(last / "open_clip_model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    base = load("starft-tiny:none")
    assert any(not torch.equal(v, saved[k]) for k, v in base.model.state_dict().items())  # it did train
    ours = load(str(last))
    assert ours.extra["starft"]["method"] == "starft"


def test_csv_with_captions_and_kl_and_freeze_text(tmp_path: Path, class_folders: Path):
    rows = ["filepath,caption,label"]
    for c in ("cat", "dog", "car"):
        for i in range(4):
            rows.append(f"{class_folders}/{c}/{i}.jpg,a {c} seen in picture {i}.,{c}")
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    result = _finetune(
        "--data",
        f"csv:{csv}",
        "--method",
        "kl",
        "--freeze-text",
        "--batch-size",
        "6",
        "--epochs",
        "1",
        "--out",
        str(run),
    )
    assert result.exit_code == 0, result.output
    from starft_cli.models import load

    base = load("starft-tiny:none").model.state_dict()
    saved = load_file(str(run / "checkpoints" / "last" / "open_clip_model.safetensors"))
    text_keys = [k for k in saved if not k.startswith("visual.") and not k.startswith("logit_")]
    assert text_keys and all(torch.equal(saved[k], base[k]) for k in text_keys)  # the text tower is frozen
    assert any(not torch.equal(saved[k], base[k]) for k in saved if k.startswith("visual."))
    assert json.loads((run / "config.json").read_text())["method"] == "kl"


def test_imagenet_train_layout_and_val_selection(tmp_path: Path):
    root = tmp_path / "root"
    wnids = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
    for split in ("train", "val"):
        make_class_folders(root / "imagenet" / split, wnids, per_class=4)
    run = tmp_path / "run"
    pool = tmp_path / "pool.txt"
    pool.write_text("{} in the sea.\n{} on grass.\n")
    result = _finetune(
        "--data", "imagenet", "--data-root", str(root), "--batch-size", "6", "--epochs", "2",
        "--val-data", "imagenet", "--val-split", "val", "--val-templates", "single", "--pool", str(pool),
        "--out", str(run),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    vals = [r for r in _metrics(run) if "val_accuracy" in r]
    assert [v["epoch"] for v in vals] == [0, 1]
    best = json.loads((run / "checkpoints" / "best" / "open_clip_config.json").read_text())["starft"]
    assert best["val_accuracy"] == max(v["val_accuracy"] for v in vals)
    assert "validation accuracy" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("finished 4 of 4 steps in ")
    assert f"best validation accuracy {best['val_accuracy']:.4f} ({run / 'checkpoints' / 'best'})" in summary


def test_cross_entropy_baseline(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    result = _finetune(
        "--data",
        f"folder:{class_folders}",
        "--method",
        "ft",
        "--batch-size",
        "6",
        "--epochs",
        "1",
        "--out",
        str(run),
    )
    assert result.exit_code == 0, result.output
    head = load_file(str(run / "checkpoints" / "last" / "classification_head.safetensors"))["weight"]
    assert head.shape == (3, 32)
    meta = json.loads((run / "checkpoints" / "last" / "open_clip_config.json").read_text())["starft"]
    assert meta["method"] == "ft" and meta["head_classnames"] == ["car", "cat", "dog"]


def test_toml_config_and_flags_win(tmp_path: Path, class_folders: Path):
    cfg = tmp_path / "ft.toml"
    cfg.write_text(f'data = "folder:{class_folders}"\nepochs = 3\nlr = 3e-4\nbatch-size = 6\npool = "texture"\n')
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["finetune", *FAST[:2], "--config", str(cfg), "--epochs", "1", "--workers", "0", "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["lr"] == 3e-4 and config["pool"] == "texture" and config["batch_size"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "ce", "--reg", "star"], "--loss ce is the cross-entropy baseline"),
        (["--batch-size", "10", "--grad-accum", "3"], "not divisible"),
        (["--reg", "l2"], "--reg 'l2'"),
        (["--method", "lipsum"], "unknown method 'lipsum'"),
        (["--method", "l2-sp", "--hp", "alpha=-1"], "l2-sp hyper-parameter 'alpha' must be >= 0"),
        (["--method", "l2-sp", "--hp", "gamma=1"], "l2-sp has no hyper-parameter 'gamma' (it has: alpha, beta)"),
        (["--method", "ft", "--hp", "alpha"], "--hp 'alpha' is not NAME=VALUE"),
        (["--method", "ft", "--lambda", "0.3"], "--lambda has no effect with --method ft"),
        (["--method", "flyp", "--reg", "star"], "contradicts the deprecated --reg/--loss"),
        (["--precision", "fp8"], "--precision"),
        (["--pool", "nosuchpool"], "unknown spurious pool"),
        (["--data", "folder:/no/such/dir"], "no such folder"),
        (["--epochs", "0"], "--epochs"),
        (["--reg", "none", "--pool", "texture"], "--pool has no effect with --method flyp"),
        (["--val-split", "val"], "--val-split is given without --val-data"),
    ],
)
def test_invalid_settings_are_refused_before_loading_a_model(tmp_path: Path, class_folders: Path, args, message):
    run = tmp_path / "run"
    base = ["finetune", "--backbone", "nosuch-model-would-fail-to-load", "--data", f"folder:{class_folders}"]
    result = runner.invoke(app, [*base, "--out", str(run), *args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.stderr
    assert "unknown model" not in result.stderr  # refused before the model reference was even looked at
    assert not (run / "config.json").exists()


def test_existing_run_needs_resume(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    args = ["--data", f"folder:{class_folders}", "--batch-size", "6", "--epochs", "1", "--out", str(run)]
    assert _finetune(*args).exit_code == 0
    again = _finetune(*args)
    assert again.exit_code == 1 and "already holds a run" in again.stderr and "--resume" in again.stderr
    changed = _finetune(*args[:-2], "--out", str(run), "--resume", "--lr", "0.5")
    assert changed.exit_code == 2 and "--lr" in changed.stderr
    finished = _finetune("--out", str(run), "--resume")  # a finished run resumes to the same place
    assert finished.exit_code == 0, finished.output
    assert [r["step"] for r in _metrics(run)] == [1, 2]


def test_bf16_grad_accum_and_grad_checkpointing_run(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    result = _finetune(
        "--data", f"folder:{class_folders}", "--batch-size", "6", "--epochs", "1", "--precision", "bf16",
        "--grad-accum", "2", "--grad-checkpointing", "--lambda-schedule", "constant", "--out", str(run),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] == r["loss"] and r["reg"] >= -1e-6 for r in records)  # finite, no NaN


def test_python_api(tmp_path: Path, class_folders: Path):
    from starft_cli.train import TrainConfig, finetune

    config = TrainConfig(
        backbone="starft-tiny:none", data=f"folder:{class_folders}", batch_size=6, epochs=1, warmup=1,
        workers=0, device="cpu", method="flyp", out=str(tmp_path / "run"),
    )  # fmt: skip
    events = []
    run = finetune(config, progress=events.append)
    assert run == tmp_path / "run"
    assert [e["kind"] for e in events][:2] == ["start", "step"] and events[-1]["kind"] == "done"
    meta = json.loads((run / "checkpoints" / "last" / "open_clip_config.json").read_text())["starft"]
    assert meta["method"] == "flyp" and all(r["reg"] == 0 for r in _metrics(run))


@pytest.mark.parametrize(
    "extra",
    [
        ("--precision", "bf16", "--grad-accum", "2"),
        ("--precision", "fp16"),
        ("--method", "ft"),
        ("--method", "kl", "--freeze-text"),
    ],
)
def test_no_warning_reaches_the_user(tmp_path: Path, class_folders: Path, extra):
    """A short single-process run under ``warnings.simplefilter("always")`` records no warning at all (torch
    deprecations included: GradScaler, autocast, DataLoader, AdamW)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _finetune(
            "--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "1", "--val-data",
            f"folder:{class_folders}", "--out", str(tmp_path / "run"), *extra,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert "Warning" not in result.stderr  # no Python warning printed (starft's own notes are "warning: ...")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_unreadable_training_image_is_one_line_even_from_a_worker(tmp_path: Path, class_folders: Path, workers):
    victim = sorted((class_folders / "dog").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated JPEG
    result = runner.invoke(
        app,
        [
            "finetune",
            "--backbone",
            "starft-tiny:none",
            "--data",
            f"folder:{class_folders}",
            "--batch-size",
            "12",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--workers",
            workers,
            "--strict",  # without it the image is replaced and counted (tests/test_train_unreadable.py)
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and victim.name in errors[0] and "truncated" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Caught" not in result.stderr


def test_a_batch_that_leaves_much_of_each_epoch_out_is_a_warning(tmp_path: Path, class_folders: Path):
    # 12 images, batch 8: each epoch trains on 8 and leaves 4 out (33%)
    result = _finetune("--data", f"folder:{class_folders}", "--batch-size", "8", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "each epoch trains on 8 of the 12 images (whole batches of 8 only" in result.stderr
    quiet = _finetune("--data", f"folder:{class_folders}", "--batch-size", "4", "--out", str(tmp_path / "run2"))
    assert quiet.exit_code == 0 and "each epoch trains on" not in quiet.stderr


def test_an_unreadable_validation_image_is_one_line_from_a_worker(tmp_path: Path, class_folders: Path):
    val = make_class_folders(tmp_path / "val", ["cat", "dog", "car"], per_class=2)
    victim = sorted((val / "car").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    result = runner.invoke(
        app,
        [
            "finetune",
            "--backbone",
            "starft-tiny:none",
            "--data",
            f"folder:{class_folders}",
            "--val-data",
            f"folder:{val}",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and victim.name in errors[0] and "truncated" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Caught" not in result.stderr


def test_worker_message_unwraps_what_torch_reraises():
    from starft_cli.errors import ImageError, worker_message

    wrapped = (
        "Caught ImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ImageError(...)\nstarft_cli.errors.ImageError: /d/a.jpg is damaged\n'
    )
    assert worker_message(wrapped) == "/d/a.jpg is damaged"
    assert worker_message("a plain message") is None
    assert ImageError(wrapped).one_line() == "/d/a.jpg is damaged"


def test_help_method_lists_and_describes_the_methods():
    listing = runner.invoke(app, ["finetune", "--help-method"])
    assert listing.exit_code == 0, listing.output
    names = [line.split()[0] for line in listing.stdout.split("\n\n")[0].splitlines()]  # one line per method
    assert names[0] == "starft" and {"flyp", "ft", "kl", "lp", "lp-ft", "l2-sp"} <= set(names)
    card = runner.invoke(app, ["finetune", "--method", "lp-ft", "--help-method"])
    assert card.exit_code == 0, card.output
    assert "Kumar et al." in card.stdout and "ICLR 2022" in card.stdout
    assert "--hp lp_fraction=VALUE: share of the run's steps spent probing (default 0.5)" in card.stdout
    unknown = runner.invoke(app, ["finetune", "--method", "lpft", "--help-method"])
    assert unknown.exit_code == 2 and "unknown method 'lpft'" in unknown.stderr and "lp-ft" in unknown.stderr


def test_lp_trains_only_the_head_and_lp_ft_then_the_image_tower(tmp_path: Path, class_folders: Path):
    from starft_cli.models import load

    start = load("starft-tiny:none", seed=0).model.state_dict()
    common = ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "2"]
    lp, lpft = tmp_path / "lp", tmp_path / "lpft"
    assert _finetune(*common, "--method", "lp", "--out", str(lp)).exit_code == 0
    weights = load_file(str(lp / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert all(torch.equal(weights[k], start[k].cpu()) for k in weights)  # the image tower did not move
    head = load_file(str(lp / "checkpoints" / "last" / "classification_head.safetensors"))["weight"]
    result = _finetune(*common, "--method", "lp-ft", "--hp", "lp_fraction=0.5", "--out", str(lpft))
    assert result.exit_code == 0, result.output
    records = _metrics(lpft)
    steps = [r for r in records if "loss" in r]
    assert [r["stage"] for r in steps] == ["lp"] * (len(steps) // 2) + ["ft"] * (len(steps) - len(steps) // 2)
    assert steps[0]["lr"] == pytest.approx(1e-3 / 1)  # the probe's own peak learning rate (warm-up of 1 step)
    moved = load_file(str(lpft / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert any(not torch.equal(moved[k], start[k].cpu()) for k in moved if k.startswith("visual."))
    assert all(torch.equal(moved[k], start[k].cpu()) for k in moved if not k.startswith("visual."))
    assert head.shape == (3, 32)


def test_a_linear_probe_keeps_batchnorm_statistics_of_the_frozen_tower(tmp_path: Path, class_folders: Path):
    """A frozen tower runs in eval mode: with BatchNorm (the demo's ResNet tower), LP leaves the image tower's running
    statistics as they were, so its features are the zero-shot model's (and LP-FT's first stage too)."""
    from starft_cli.models import load

    start = load("starft-demo:none", seed=0).model.state_dict()
    assert any(k.endswith("running_mean") for k in start)
    run = tmp_path / "lp"
    args = ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "1", "--method", "lp"]
    result = runner.invoke(app, ["finetune", *FAST, *args, "--backbone", "starft-demo:none", "--out", str(run)])
    assert result.exit_code == 0, result.output
    weights = load_file(str(run / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert all(torch.equal(weights[k], start[k].cpu()) for k in weights), [
        k for k in weights if not torch.equal(weights[k], start[k].cpu())
    ][:3]


def test_evaluation_uses_a_classifier_runs_trained_head(tmp_path: Path, class_folders: Path):
    """An LP run changes only the head: evaluated with its trained head its predictions move away from the
    zero-shot model's; the record says which head was used. A zero-shot model keeps the template head."""
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    run = tmp_path / "lp"
    args = ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "3", "--method", "lp"]
    result = _finetune(*args, "--lr", "0.5", "--out", str(run))
    assert result.exit_code == 0, result.output
    suite = Suite("own", (SuiteEntry(f"folder:{class_folders}", ("top1", "ece")),))
    lp = evaluate([str(run / "checkpoints" / "last")], suite, None, use_cache=False).frame
    zs = evaluate(["starft-tiny:none"], suite, None, use_cache=False).frame
    assert set(lp["templates"]) == {"trained head"} and "trained head" not in set(zs["templates"])
    ece = {name: float(f[f["metric"] == "ece"]["value"].iloc[0]) for name, f in (("lp", lp), ("zs", zs))}
    assert ece["lp"] != ece["zs"]  # same image features, another head


def test_a_hyper_parameter_refused_at_set_up_leaves_no_run_behind(tmp_path: Path, class_folders: Path):
    run = tmp_path / "run"
    args = ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "1", "--method", "car-ft"]
    result = _finetune(*args, "--hp", "contexts=nosuch-template-set", "--out", str(run))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (run / "config.json").exists()  # nothing to --resume: the same command with a good value runs
    again = _finetune(*args, "--hp", "contexts=imagenet80", "--out", str(run))
    assert again.exit_code == 0, again.output


def test_shared_settings_given_as_hyper_parameters_point_to_their_flag():
    result = runner.invoke(app, ["finetune", *FAST, "--data", "folder:/x", "--hp", "lambda=1"])
    assert result.exit_code == 2
    assert "starft has no hyper-parameter 'lambda' (it has: none). It is a run setting: use" in result.stderr
    assert "--lambda" in result.stderr
