"""The run-directory and model-folder layout lives in one module (starft_cli/runs.py): training writes it,
publishing and model loading read it, and no other module spells its file names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from starft_cli import runs

LAYOUT_LITERALS = {
    "open_clip_model.safetensors",
    "open_clip_config.json",
    "config.json",
    "metrics.jsonl",
    "checkpoints",
    "training_state.pt",
    "classification_head.safetensors",
    "results.json",
    ".lock",
}


def test_layout_paths(tmp_path: Path) -> None:
    layout = runs.RunLayout(tmp_path / "run")
    root = tmp_path / "run"
    assert layout.config == root / "config.json"
    assert layout.metrics == root / "metrics.jsonl"
    assert layout.checkpoint("best") == root / "checkpoints" / "best"
    assert layout.checkpoint(runs.LAST) == root / "checkpoints" / "last"
    assert layout.eval_results == root / "eval" / "results.json"
    assert layout.lock == root / ".lock"
    assert not layout.is_run()
    assert (runs.WEIGHTS_NAME, runs.CONFIG_NAME) == ("open_clip_model.safetensors", "open_clip_config.json")


def test_every_module_takes_the_file_names_from_runs() -> None:
    from starft_cli import models, pretrained
    from starft_cli.reports import schema
    from starft_cli.train import checkpoint
    from starft_cli.zoo import manifest, publish

    assert models.WEIGHTS_NAME is runs.WEIGHTS_NAME and models.CONFIG_NAME is runs.CONFIG_NAME
    assert publish.WEIGHTS_NAME is runs.WEIGHTS_NAME and publish.CONFIG_NAME is runs.CONFIG_NAME
    assert checkpoint.STATE_NAME is runs.STATE_NAME and checkpoint.LOCK_NAME is runs.LOCK_NAME
    assert schema.RESULTS_NAME is runs.RESULTS_NAME
    assert manifest.DEFAULT_HF_FILENAME is runs.WEIGHTS_NAME
    assert pretrained.hub_files({"hf_hub": "org/repo/"}) == ("org/repo", list(runs.HF_WEIGHT_CANDIDATES))
    assert issubclass(checkpoint.RunDir, runs.RunLayout)


def test_no_other_module_spells_a_layout_file_name() -> None:
    package = Path(runs.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(runs.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in LAYOUT_LITERALS:
                found.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
    assert found == []


def test_training_writes_what_loading_and_publishing_read(tmp_path: Path, tiny) -> None:
    from starft_cli.models import load
    from starft_cli.train.checkpoint import RunDir, save_training_checkpoint
    from starft_cli.zoo.publish import find_checkpoint

    run = RunDir(tmp_path / "run")
    run.write_config(json.dumps({"method": "starft"}))
    run.append_metrics({"step": 1, "loss": 1.5})
    folder = save_training_checkpoint(
        run, runs.LAST, tiny.model, tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny", metadata={}, state=None
    )
    layout = runs.RunLayout(run.root)
    assert folder == layout.checkpoint("last")
    assert layout.is_run() and json.loads(layout.metrics.read_text(encoding="utf-8")) == {"step": 1, "loss": 1.5}
    assert sorted(p.name for p in folder.iterdir()) == sorted([runs.WEIGHTS_NAME, runs.CONFIG_NAME])
    assert runs.is_model_folder(folder) and runs.run_of_checkpoint(folder) == run.root
    assert find_checkpoint(run.root) == (folder, run.root)
    assert find_checkpoint(folder) == (folder, run.root)
    assert load(str(folder)).fingerprint == tiny.fingerprint


def test_publish_prefers_checkpoints_in_the_order_runs_gives(
    tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starft_cli.models import save_checkpoint
    from starft_cli.zoo.publish import find_checkpoint

    layout = runs.RunLayout(tmp_path / "run")
    for name in (runs.BEST, runs.LAST):
        save_checkpoint(tiny.model, layout.checkpoint(name), tiny.model_cfg, tiny.preprocess_cfg, arch="starft-tiny")
    assert find_checkpoint(layout.root) == (layout.checkpoint("best"), layout.root)
    monkeypatch.setattr(runs, "CHECKPOINT_NAMES", (runs.LAST, runs.BEST))  # one module decides, publish follows
    assert find_checkpoint(layout.root) == (layout.checkpoint("last"), layout.root)
    # a model folder outside any run directory has no run
    assert runs.find_model_folder(layout.checkpoint("best")) == (layout.checkpoint("best"), None)
    assert runs.find_model_folder(tmp_path) is None
