"""A model reference is parsed once and the parsed value passed on; one loader (`load`), `load_model` its
deprecated alias; a zoo reference carries its name in its own field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import starft_cli
from starft_cli import models
from starft_cli.cli.app import app
from starft_cli.models import ModelRef, load, parse_model_ref

runner = CliRunner()


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = models.parse_model_ref

    def counting(ref: str, arch: str | None = None) -> ModelRef:
        calls.append(ref)
        return real(ref, arch=arch)

    monkeypatch.setattr(models, "parse_model_ref", counting)
    return calls


def test_zoo_reference_names_the_entry_in_zoo_name() -> None:
    parsed = parse_model_ref("zoo:starft-demo-zero-shot")
    assert (parsed.kind, parsed.zoo_name, parsed.tag, parsed.arch) == ("zoo", "starft-demo-zero-shot", None, None)
    pretrained = parse_model_ref("starft-tiny:none")
    assert (pretrained.tag, pretrained.zoo_name) == ("none", None)


def test_load_takes_a_parsed_reference_without_parsing_again(monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    parsed = parse_model_ref("starft-tiny:none")
    calls = _count_parses(monkeypatch)
    loaded = load(parsed)
    assert calls == []
    assert loaded.ref is parsed and loaded.fingerprint == tiny.fingerprint


def test_classify_takes_a_parsed_reference(images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from starft_cli.zeroshot import classify

    parsed = parse_model_ref("starft-tiny:none")
    calls = _count_parses(monkeypatch)
    results = classify(images[:1], ["cat", "dog"], model=parsed, templates=["a photo of a {}."])
    assert calls == [] and [r["image"] for r in results] == [str(images[0])]


def test_evaluate_command_parses_each_model_once(class_folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_parses(monkeypatch)
    args = ["eval", "--model", "starft-tiny:none", "--data", f"folder:{class_folders}", "--metric", "top1"]
    done = runner.invoke(app, [*args, "--device", "cpu", "--workers", "0", "--no-cache", "--format", "json"])
    assert done.exit_code == 0, done.output
    assert calls == ["starft-tiny:none"]
    assert '"model": "starft-tiny:none"' in done.stdout


def test_one_loader_in_the_api_load_model_is_a_deprecated_alias(tiny) -> None:
    assert starft_cli.load is models.load and starft_cli.ModelRef is ModelRef
    with pytest.warns(DeprecationWarning, match=r"load_model\(\) is deprecated; use starft_cli\.load\(ref\)"):
        model, preprocess, tokenizer = starft_cli.load_model("starft-tiny:none")
    assert models.weights_fingerprint(model) == tiny.fingerprint
    assert callable(preprocess) and callable(tokenizer)
