"""``starft zoo publish``: the upload folder loads with plain open_clip, the card carries the run's metrics, and the
upload goes through huggingface_hub to the emulated Hub (tests/hubserver.py)."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli import zoo
from starft_cli.cli.app import app
from tests.hubserver import HubServer, hub  # noqa: F401  (fixture)
from tests.imagegen import make_image
from tests.zoo_helpers import CONFIG, WEIGHTS, sha256_bytes, tiny_checkpoint  # noqa: F401  (fixture)

runner = CliRunner()
RESULTS = [
    {"model": "runs/tiny-run", "dataset": "waterbirds", "metric": "worst_group_acc", "value": 0.6123, "suite": "group"},
    {"model": "runs/tiny-run", "dataset": "waterbirds", "metric": "avg_acc", "value": 0.8456, "suite": "group"},
    {"model": "runs/tiny-run", "dataset": "imagenet-r", "metric": "top1", "value": 0.3789, "suite": "domain"},
]
RUN_CONFIG = {
    "method": "starft",
    "model": "starft-tiny:none",
    "dataset": "tiny-folders",
    "lr": 1e-5,
    "epochs": 2,
    "batch_size": 8,
    "starft": {"lambda": 0.5, "pool": "background", "schedule": "linear"},
}


@pytest.fixture
def run_dir(tmp_path: Path, tiny_checkpoint: Path) -> Path:  # noqa: F811
    """A run directory laid out as `starft finetune` writes it (best and last checkpoints differ)."""
    from starft_cli.models import load, save_checkpoint

    run = tmp_path / "runs" / "tiny-run"
    best = run / "checkpoints" / "best"
    best.mkdir(parents=True)
    for name in (WEIGHTS, CONFIG):
        (best / name).write_bytes((tiny_checkpoint / name).read_bytes())
    other = load("starft-tiny:none", seed=1)  # different weights: publish must pick best, not last
    save_checkpoint(
        other.model, run / "checkpoints" / "last", other.model_cfg, other.preprocess_cfg, arch="starft-tiny"
    )
    (run / "config.json").write_text(json.dumps(RUN_CONFIG, indent=2), encoding="utf-8")
    lines = [
        {"epoch": 0, "step": 10, "loss": 2.5, "val_acc": 0.5},
        {"epoch": 1, "step": 20, "loss": 1.25, "val_acc": 0.75},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    return run


def test_dry_run_folder_loads_with_plain_open_clip_and_card_has_metrics(run_dir: Path, tmp_path: Path, tiny) -> None:
    import open_clip
    import torch

    from starft_cli.models import register_builtin_configs

    out = tmp_path / "upload"
    result = runner.invoke(
        app, ["zoo", "publish", str(run_dir), "--repo", "me/tiny-starft", "--dry-run", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"dry run: wrote 3 files to {out} (nothing uploaded)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG, WEIGHTS]
    best = run_dir / "checkpoints" / "best" / WEIGHTS
    assert (out / WEIGHTS).read_bytes() == best.read_bytes()  # best preferred over last

    register_builtin_configs()  # starft-tiny is a project architecture; ViT-B-16 needs nothing
    model, _, _ = open_clip.create_model_and_transforms("starft-tiny", pretrained=str(out / WEIGHTS))
    for key, value in tiny.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    local, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert torch.equal(local.state_dict()["logit_scale"], tiny.model.state_dict()["logit_scale"])

    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: open_clip\nlicense: mit\n")
    for record in RESULTS:
        assert f"| runs/tiny-run | {record['dataset']} | {record['metric']} | {record['value']:.6g} |" in card
    assert "| lr | 1e-05 |" in card and "| starft.lambda | 0.5 |" in card
    assert "fine-tuned with **starft** from `starft-tiny:none`" in card
    assert f"sha256 `{sha256_bytes(best.read_bytes())}`" in card
    assert "| val_acc | 0.75 |" in card  # last metrics.jsonl record
    assert 'open_clip.create_model_and_transforms("hf-hub:me/tiny-starft")' in card


def test_dry_run_of_a_checkpoint_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "upload"
    result = runner.invoke(
        app, ["zoo", "publish", str(tiny_checkpoint), "--repo", "me/ckpt", "--dry-run", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Evaluation" not in card  # no run directory, no leaderboard
    assert "| method | starft |" in card  # hyperparameters from the checkpoint's own metadata
    assert json.loads((out / CONFIG).read_text())["arch"] == "starft-tiny"


def test_publish_uploads_to_the_hub_and_the_printed_entry_makes_it_a_zoo_model(
    run_dir: Path,
    hub: HubServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = runner.invoke(
        app, ["zoo", "publish", str(run_dir), "--repo", "me/tiny-starft", "--private", "--revision-message", "v1"]
    )
    assert result.exit_code == 0, result.output
    repo = hub.repos["me/tiny-starft"]
    assert repo.private is True
    commit = repo.refs["main"]
    files = repo.commits[commit]
    assert sorted(files) == ["README.md", CONFIG, WEIGHTS]
    best = (run_dir / "checkpoints" / "best" / WEIGHTS).read_bytes()
    assert files[WEIGHTS] == best
    assert [r.path for r in hub.requests if r.method == "POST"] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/me/tiny-starft/preupload/main",
        "/api/models/me/tiny-starft/commit/main",
    ]
    header = json.loads(hub.requests[-1].body.splitlines()[0])
    assert header["value"]["summary"] == "v1"
    assert f"uploaded {run_dir / 'checkpoints' / 'best'} to me/tiny-starft at commit {commit}" in result.stdout

    toml_text = result.stdout[result.stdout.index("[models.") : result.stdout.index("\nstarft zoo add")]
    entry = tomllib.loads("schema = 1\n" + toml_text)["models"]["tiny-starft"]
    assert entry["source"] == f"hf-hub:me/tiny-starft@{commit}"
    assert entry["sha256"] == sha256_bytes(best)
    assert (entry["arch"], entry["kind"], entry["training_data"]) == ("starft-tiny", "starft", "tiny-folders")
    assert [(m["dataset"], m["metric"], m["value"]) for m in entry["metrics"]] == [
        (r["dataset"], r["metric"], r["value"]) for r in RESULTS
    ]

    # Anyone can now use it: run the printed `starft zoo add` line, then classify by name.
    add_line = next(line for line in result.stdout.splitlines() if line.startswith("starft zoo add"))
    added = runner.invoke(app, shlex.split(add_line)[1:])
    assert added.exit_code == 0, added.output
    assert zoo.find_entry("tiny-starft").source.revision == commit
    image = make_image(tmp_path / "img.jpg", seed=1)
    classified = runner.invoke(
        app,
        ["classify", str(image), "--labels", "a,b", "--model", "tiny-starft", "--device", "cpu", "--format", "json"],
    )
    assert classified.exit_code == 0, classified.output
    probabilities = [p["probability"] for p in json.loads(classified.stdout)[0]["predictions"]]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_publish_errors_are_one_line(run_dir: Path, hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["zoo", "publish", str(empty), "--repo", "me/x", "--dry-run"])
    assert result.exit_code == 1 and "holds no publishable checkpoint" in result.stderr
    result = runner.invoke(app, ["zoo", "publish", str(run_dir), "--repo", "not-a-repo", "--dry-run"])
    assert result.exit_code == 2 and "invalid Hub repository 'not-a-repo'" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    result = runner.invoke(app, ["zoo", "publish", str(run_dir), "--repo", "me/x"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "upload to me/x" in lines[0] and "HTTP 401" in lines[0] and "hf auth login" in lines[0]
    assert "me/x" not in hub.repos


def test_publish_refuses_a_checkpoint_without_arch(tiny_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "noarch"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes((tiny_checkpoint / WEIGHTS).read_bytes())
    config = json.loads((tiny_checkpoint / CONFIG).read_text())
    del config["arch"]
    (folder / CONFIG).write_text(json.dumps(config))
    result = runner.invoke(app, ["zoo", "publish", str(folder), "--repo", "me/x", "--dry-run"])
    assert result.exit_code == 1 and "does not name its architecture" in result.stderr


def test_card_snippets_work_in_plain_open_clip_for_an_architecture_it_does_not_ship(
    run_dir: Path, tmp_path: Path, tiny
) -> None:
    """starft-tiny is registered by starft only: the card must not offer open_clip's ARCH + pretrained= form, and
    its local-dir: lines must run in a plain Python process that never imports starft."""
    import re
    import subprocess
    import sys

    out = tmp_path / "upload"
    assert (
        runner.invoke(app, ["zoo", "publish", str(run_dir), "--repo", "me/t", "--dry-run", "--out", str(out)]).exit_code
        == 0
    )
    card = (out / "README.md").read_text(encoding="utf-8")
    assert 'create_model_and_transforms("starft-tiny"' not in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    local = [line for line in code.splitlines() if line.startswith("import") or "local-dir:" in line]
    assert len(local) == 3  # import, model, tokenizer
    script = "\n".join(local).replace("PATH/TO/FOLDER", str(out))
    script += "\nprint(model.logit_scale.item(), tuple(tokenizer(['a cat']).shape))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scale, shape = done.stdout.split(" ", 1)
    assert float(scale) == pytest.approx(tiny.model.logit_scale.item()) and shape.strip() == "(1, 32)"


def test_card_offers_the_architecture_form_only_when_open_clip_builds_the_same_model(tiny_checkpoint: Path) -> None:  # noqa: F811
    import dataclasses

    import open_clip

    from starft_cli.zoo.publish import model_card, plain_arch_form_works, plan

    base = plan(tiny_checkpoint, "me/x")
    vit = dataclasses.replace(
        base,
        arch="ViT-B-16",
        open_clip_config={"model_cfg": open_clip.get_model_config("ViT-B-16"), "preprocess_cfg": {"size": [224, 224]}},
    )
    assert plain_arch_form_works(vit)
    assert 'open_clip.create_model_and_transforms("ViT-B-16", pretrained="open_clip_model.safetensors")' in model_card(
        vit
    )
    quick = dataclasses.replace(
        vit, open_clip_config={"model_cfg": {**open_clip.get_model_config("ViT-B-16"), "quick_gelu": True}}
    )
    assert not plain_arch_form_works(quick)  # the name alone would build GELU, not QuickGELU
    other_pp = dataclasses.replace(
        vit,
        open_clip_config={
            "model_cfg": open_clip.get_model_config("ViT-B-16"),
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        },
    )
    assert not plain_arch_form_works(other_pp)
    assert not plain_arch_form_works(base)  # starft-tiny
    assert "local-dir:PATH/TO/FOLDER" in model_card(base)


def test_the_card_quotes_the_published_checkpoint_only(run_dir: Path, tmp_path: Path) -> None:
    """A ``best`` checkpoint chosen at epoch 0: the card shows that step's log record, not the run's last one, and
    quotes only evaluation records of the published weights (issue 20 item 14, issue 19 item 1)."""
    from starft_cli.models import load

    best = run_dir / "checkpoints" / "best"
    config = json.loads((best / CONFIG).read_text())
    config["starft"] = {**config["starft"], "step": 10, "epoch": 0}
    (best / CONFIG).write_text(json.dumps(config))
    best_fp = load(str(best)).fingerprint
    last_fp = load(str(run_dir / "checkpoints" / "last")).fingerprint
    records = [
        {"model": str(best), "dataset": "cifar10", "metric": "top1", "value": 0.611, "weights_fingerprint": best_fp},
        {"model": str(run_dir), "dataset": "cifar10", "metric": "top1", "value": 0.472, "weights_fingerprint": last_fp},
    ]
    (run_dir / "eval" / "results.json").write_text(json.dumps(records))
    out = tmp_path / "upload"
    result = runner.invoke(app, ["zoo", "publish", str(run_dir), "--repo", "me/t", "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Training log record of this checkpoint (step 10)" in card
    assert "| epoch | 0 |" in card and "| loss | 2.5 |" in card and "| loss | 1.25 |" not in card
    assert "| cifar10 | top1 | 0.611 |" in card and "0.472" not in card
    assert "(1 record(s) of other weights, e.g. the run's other checkpoint, left out)" in card


def test_a_published_classifier_keeps_its_head_on_the_hub_and_in_the_zoo(
    tmp_path: Path,
    hub: HubServer,  # noqa: F811
    tiny,
) -> None:
    import torch

    from starft_cli.models import load, save_checkpoint

    best = tmp_path / "run" / "checkpoints" / "best"
    torch.manual_seed(0)
    head = torch.randn(2, 32) * 10
    meta = {"method": "lp", "base_model": "starft-tiny:none", "head_classnames": ["a", "b"], "head_templates": ["{}"]}
    save_checkpoint(tiny.model, best, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny", metadata=meta, head=head)
    result = runner.invoke(app, ["zoo", "publish", str(best), "--repo", "me/lp"])
    assert result.exit_code == 0, result.output
    files = hub.repos["me/lp"].commits[hub.repos["me/lp"].refs["main"]]
    assert sorted(files) == ["README.md", "classification_head.safetensors", CONFIG, WEIGHTS]
    assert torch.equal(load("hf-hub:me/lp").extra["head"], head)

    add_line = next(line for line in result.stdout.splitlines() if line.startswith("starft zoo add"))
    assert runner.invoke(app, shlex.split(add_line)[1:]).exit_code == 0
    image = make_image(tmp_path / "img.jpg", seed=1)
    args = ["classify", str(image), "--labels", "a,b", "--device", "cpu", "--format", "json"]
    by_name = runner.invoke(app, [*args, "--model", "lp"])
    local = runner.invoke(app, [*args, "--model", str(best)])
    assert by_name.exit_code == 0 and local.exit_code == 0, by_name.output + local.output
    assert json.loads(by_name.stdout)[0]["predictions"] == json.loads(local.stdout)[0]["predictions"]
    zero_shot = runner.invoke(app, [*args, "--model", "starft-tiny:none"])
    assert json.loads(zero_shot.stdout)[0]["predictions"] != json.loads(local.stdout)[0]["predictions"]
