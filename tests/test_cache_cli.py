"""`starft cache list | clear`: the sizes of starft's own caches, and emptying them one kind at a time."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.cli.cache import human_size

runner = CliRunner()


def _usage() -> dict[str, dict]:
    result = runner.invoke(app, ["cache", "list", "--json"])
    assert result.exit_code == 0, result.output
    return {row["kind"]: row for row in json.loads(result.stdout)}


def test_cache_list_shows_what_each_cache_holds_and_clear_empties_one_kind(tiny, tmp_path: Path, starft_home: Path):
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from starft_cli.models import weights_fingerprint
    from starft_cli.train.bank import cached_bank
    from starft_cli.zeroshot import cached_zero_shot_head
    from starft_cli.zoo.hub import _remember
    from tests.imagegen import make_class_folders

    empty = _usage()
    assert set(empty) == {"heads", "features", "bank", "zoo-verify", "datasets", "models"}
    assert all(row["files"] == 0 and row["bytes"] == 0 for row in empty.values())
    assert empty["heads"]["path"] == str(starft_home / "cache" / "heads")

    cached_zero_shot_head(tiny, ["cat", "dog"], ["a photo of a {}."])
    root = make_class_folders(tmp_path / "f", ["a", "b"], per_class=2, size=(32, 32))
    compute_features(tiny, load_dataset(f"folder:{root}"))
    cached_bank(
        tiny.model, tiny.tokenizer, weights_fingerprint(tiny.model), ["a", "b"], "a {}.", ["{}"], torch.device("cpu")
    )
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 10)
    _remember(weights, "0" * 64)

    full = _usage()
    assert (full["heads"]["files"], full["features"]["files"], full["bank"]["files"], full["zoo-verify"]["files"]) == (
        1,
        2,  # the features and the list of skipped images
        1,
        1,
    )
    heads_size = sum(p.stat().st_size for p in (starft_home / "cache" / "heads").iterdir())
    assert full["heads"]["bytes"] == heads_size > 0

    table = runner.invoke(app, ["cache", "list"])
    assert table.exit_code == 0 and human_size(heads_size) in table.stdout and "zoo-verify" in table.stdout

    cleared = runner.invoke(app, ["cache", "clear", "--kind", "heads"])
    assert cleared.exit_code == 0, cleared.output
    assert f"heads: removed 1 file(s), {human_size(heads_size)}" in cleared.stdout
    after = _usage()
    assert after["heads"]["files"] == 0 and after["features"]["files"] == 2  # only the chosen kind

    everything = runner.invoke(app, ["cache", "clear"])
    assert everything.exit_code == 0
    assert all(row["files"] == 0 for row in _usage().values())
    # a cleared cache is rebuilt on the next use
    cached_zero_shot_head(tiny, ["cat", "dog"], ["a photo of a {}."])
    assert _usage()["heads"]["files"] == 1


def test_cache_clear_rejects_an_unknown_kind():
    result = runner.invoke(app, ["cache", "clear", "--kind", "weights"])
    assert result.exit_code == 2 and "weights" in result.output


def test_human_size():
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 1024**2, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]


def test_cache_list_shows_generated_datasets_and_built_models(starft_home: Path):
    from starft_cli.data import digits

    digits.ensure(digits.default_root())
    rows = _usage()
    assert rows["datasets"]["files"] == 5 and rows["datasets"]["bytes"] > 10_000_000
    assert rows["datasets"]["path"] == str(starft_home / "cache" / "datasets")
    cleared = runner.invoke(app, ["cache", "clear", "--kind", "datasets"])
    assert cleared.exit_code == 0 and not digits.default_root().exists()
