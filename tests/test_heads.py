"""A classifier method's trained head travels with its weights: WiSE-FT, soups, publishing and classify use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.models import load, save_checkpoint
from starft_cli.wise import write_soup, write_wise
from starft_cli.zeroshot import zero_shot_head

runner = CliRunner()
CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _classifier_checkpoint(folder: Path, seed: int, head: torch.Tensor | None) -> Path:
    """A starft-tiny checkpoint (random weights of ``seed``) as a classifier run writes it, with ``head``."""
    model = load("starft-tiny:none", seed=seed)
    meta = {"method": "lp"}
    if head is not None:
        meta |= {"head_classnames": CLASSES, "head_templates": TEMPLATES}
    save_checkpoint(model.model, folder, model.model_cfg, model.preprocess_cfg, arch="starft-tiny", metadata=meta,
                    head=head)  # fmt: skip
    return folder


def _zero_shot(ref: str) -> torch.Tensor:
    loaded = load(ref)
    return zero_shot_head(loaded.model, loaded.tokenizer, CLASSES, TEMPLATES, scale=True)


def test_wise_interpolates_the_trained_head_with_the_zero_shot_head(tmp_path: Path):
    torch.manual_seed(0)
    trained = torch.randn(3, 32)
    ft = _classifier_checkpoint(tmp_path / "ft", 1, trained)
    zs_head = _zero_shot("starft-tiny:none")  # the zero-shot side: the zero-shot model's head for the run's classes
    folders = write_wise("starft-tiny:none", str(ft), [0.0, 0.5, 1.0], tmp_path / "wise")
    for alpha, folder in zip((0.0, 0.5, 1.0), folders, strict=True):
        loaded = load(str(folder))
        assert loaded.extra["head_classnames"] == CLASSES and loaded.extra["head_templates"] == TEMPLATES
        torch.testing.assert_close(loaded.extra["head"], (1 - alpha) * zs_head + alpha * trained, atol=1e-6, rtol=0)
    assert torch.equal(load(str(folders[2])).extra["head"], trained)


def test_soups_average_heads_and_a_run_without_one_brings_its_zero_shot_head(tmp_path: Path):
    torch.manual_seed(0)
    a, b = torch.randn(3, 32), torch.randn(3, 32)
    runs = [_classifier_checkpoint(tmp_path / n, s, h) for n, s, h in (("a", 1, a), ("b", 2, b), ("c", 3, None))]
    folder, _ = write_soup("uniform", [str(r) for r in runs], tmp_path / "soup")
    c_head = _zero_shot(str(runs[2]))  # run c has no trained head: its zero-shot head for the same classes
    torch.testing.assert_close(load(str(folder)).extra["head"], (a + b + c_head) / 3, atol=1e-6, rtol=0)

    folder, info = write_soup(
        "model-stock", [str(r) for r in runs[:2]], tmp_path / "stock", pretrained="starft-tiny:none"
    )
    w0 = _zero_shot("starft-tiny:none")  # the pre-trained side's head: its zero-shot head
    da, db = (a - w0).flatten().double(), (b - w0).flatten().double()
    cos = float(da @ db / (da.norm() * db.norm()))
    t = 2 * cos / (1 + cos)
    assert info["head_t"] == pytest.approx(t)
    torch.testing.assert_close(load(str(folder)).extra["head"], t * (a + b) / 2 + (1 - t) * w0, atol=1e-5, rtol=0)


def test_an_lp_run_gives_the_same_top1_evaluated_published_interpolated_and_classified(
    tmp_path: Path, class_folders: Path
):
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    run = tmp_path / "lp"
    args = ["--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "3", "--method", "lp", "--lr", "0.5"]
    fast = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "2", "--device", "cpu"]
    result = runner.invoke(app, ["finetune", *fast, *args, "--out", str(run)])
    assert result.exit_code == 0, result.output
    checkpoint = run / "checkpoints" / "last"
    assert json.loads((checkpoint / "open_clip_config.json").read_text())["starft"]["head_templates"]

    wise = runner.invoke(app, ["wise", "--zero-shot", "starft-tiny:none", "--fine-tuned", str(checkpoint),
                               "--alpha", "1", "--out", str(tmp_path / "wise")])  # fmt: skip
    assert wise.exit_code == 0, wise.output
    published = tmp_path / "published"
    pub = runner.invoke(app, ["zoo", "publish", str(run), "--repo", "me/lp", "--dry-run", "--out", str(published)])
    assert pub.exit_code == 0, pub.output
    assert (published / "classification_head.safetensors").is_file()

    suite = Suite("own", (SuiteEntry(f"folder:{class_folders}", ("top1",)),))
    refs = ["starft-tiny:none", str(checkpoint), str(tmp_path / "wise" / "alpha_1"), str(published)]
    frame = evaluate(refs, suite, None, use_cache=False).frame
    top1 = dict(zip(frame["model"], frame["value"], strict=True))
    assert top1[str(checkpoint)] != top1["starft-tiny:none"]  # the trained head changes the answer
    assert top1[str(tmp_path / "wise" / "alpha_1")] == top1[str(checkpoint)]
    assert top1[str(published)] == top1[str(checkpoint)]

    images = sorted(class_folders.rglob("*.jpg"))
    for ref in (str(checkpoint), str(published)):
        out = runner.invoke(app, ["classify", *map(str, images), "--labels", "cat,dog,car", "-m", ref, "--device",
                                  "cpu", "--format", "json"])  # fmt: skip
        assert out.exit_code == 0, out.output
        rows = json.loads(out.stdout)
        hits = sum(r["predictions"][0]["label"] == Path(r["image"]).parent.name for r in rows)
        assert hits / len(rows) == pytest.approx(top1[str(checkpoint)])
        assert "zero-shot head" not in out.stderr

    other = runner.invoke(app, ["classify", str(images[0]), "--labels", "red,blue", "-m", str(checkpoint), "--device",
                                "cpu"])  # fmt: skip
    assert other.exit_code == 0, other.output
    assert "are not among the classes of the model's trained head (car, cat, dog)" in other.stderr

    card = (published / "README.md").read_text()
    value = top1[str(checkpoint)]
    assert f"| {value:.6g} |" in card  # the card quotes the number of the weights and head published
