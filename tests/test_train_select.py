"""--select-by: checkpoints/best chosen by top-1, worst-group or mean-group validation accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.layouts import make_waterbirds

runner = CliRunner()
FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "1", "--lr", "1e-4", "--device", "cpu"]


def test_group_metrics_equal_the_eval_definitions(tmp_path: Path, tiny):
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval import metrics as M
    from starft_cli.prompts import load_templates
    from starft_cli.train.validate import validation_metrics
    from starft_cli.zeroshot import zero_shot_head

    make_waterbirds(tmp_path, per_group=3)
    ds = load_dataset("waterbirds", str(tmp_path), "val")
    assert ds.groups is not None
    got = validation_metrics(
        tiny.model, tiny.tokenizer, tiny.preprocess, ds, templates="single", device="cpu", batch_size=5
    )
    head = zero_shot_head(tiny.model, tiny.tokenizer, ds.classnames, load_templates("single"), device="cpu", scale=True)
    with torch.no_grad():
        images = torch.stack([ds.with_transform(tiny.preprocess)[i][0] for i in range(len(ds))])
        preds = (tiny.model.encode_image(images, normalize=True).float() @ head.T).argmax(1).numpy()
    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups)
    assert got["top1"] == pytest.approx(M.accuracy(preds, labels))
    assert got["worst_group_acc"] == pytest.approx(M.worst_group_accuracy(preds, labels, groups))
    assert got["mean_group_acc"] == pytest.approx(M.mean_group_accuracy(preds, labels, groups))


def test_group_summary_skips_empty_groups():
    from starft_cli.train.validate import group_summary

    out = group_summary(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 0.0, 4.0]))
    assert out == {"worst_group_acc": 0.5, "mean_group_acc": pytest.approx(0.625)}


def test_select_by_worst_group(tmp_path: Path):
    make_waterbirds(tmp_path / "root", per_group=2)
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "finetune", *FAST, "--data", "waterbirds", "--data-root", str(tmp_path / "root"), "--batch-size", "4",
            "--epochs", "2", "--val-data", "waterbirds", "--val-split", "val", "--select-by", "worst_group_acc",
            "--out", str(run),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if "val_accuracy" in v]
    assert len(vals) == 2 and all("val_worst_group_acc" in v and "val_mean_group_acc" in v for v in vals)
    meta = json.loads((run / "checkpoints" / "best" / "open_clip_config.json").read_text())["starft"]
    assert meta["selected_by"] == "worst_group_acc"
    assert meta["val_worst_group_acc"] == max(v["val_worst_group_acc"] for v in vals)
    assert "worst_group_acc" in result.stderr.strip().splitlines()[-1]


def test_select_by_a_group_metric_needs_groups(tmp_path: Path, class_folders: Path):
    base = ["finetune", *FAST, "--data", f"folder:{class_folders}", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*base, "--val-data", f"folder:{class_folders}", "--select-by", "mean_group_acc"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --select-by mean_group_acc needs a validation set with groups")
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, [*base, "--select-by", "worst_group_acc"])
    assert result.exit_code == 2 and "--select-by is given without --val-data" in result.stderr
    result = runner.invoke(app, [*base, "--val-data", f"folder:{class_folders}", "--select-by", "top5"])
    assert result.exit_code == 2 and "--select-by 'top5' is not one of top1, worst_group_acc, mean_group_acc" in (
        result.stderr
    )
