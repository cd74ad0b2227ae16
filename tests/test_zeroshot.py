from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from starft_cli.errors import TemplateError, UsageError
from starft_cli.prompts import fill, load_templates, parse_templates, template_set_names
from starft_cli.zeroshot import cached_zero_shot_head, head_cache_key, validate_labels, zero_shot_head


def test_head_is_normalised_average_of_template_embeddings_scaled(tiny) -> None:
    classes, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of the {}."]
    head = zero_shot_head(tiny.model, tiny.tokenizer, classes, templates)
    with torch.no_grad():
        rows = []
        for c in classes:
            emb = tiny.model.encode_text(tiny.tokenizer([fill(t, c) for t in templates]))
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=0))
        expected = torch.stack(rows) * tiny.model.logit_scale.exp()
    assert head.shape == (2, tiny.model_cfg["embed_dim"])
    torch.testing.assert_close(head, expected, rtol=1e-5, atol=1e-5)
    unscaled = zero_shot_head(tiny.model, tiny.tokenizer, classes, templates, scale=False)
    torch.testing.assert_close(unscaled.norm(dim=-1), torch.ones(2))


def test_head_cache_hit_and_keys(tiny, starft_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classes, templates = ["cat", "dog"], ["a photo of a {}."]
    first = cached_zero_shot_head(tiny, classes, templates)
    files = list((starft_home / "cache" / "heads").glob("*.safetensors"))
    assert len(files) == 1

    def boom(*args, **kwargs):
        raise AssertionError("head recomputed despite the cache")

    monkeypatch.setattr("starft_cli.zeroshot.zero_shot_head", boom)
    torch.testing.assert_close(cached_zero_shot_head(tiny, classes, templates), first)
    key = head_cache_key(tiny.fingerprint, classes, templates)
    assert key != head_cache_key(tiny.fingerprint, ["dog", "cat"], templates)
    assert key != head_cache_key(tiny.fingerprint, classes, ["a {}."])
    assert key != head_cache_key("other-weights", classes, templates)


def test_damaged_cache_entry_is_rebuilt(tiny, starft_home: Path) -> None:
    classes, templates = ["cat", "dog"], ["a photo of a {}."]
    first = cached_zero_shot_head(tiny, classes, templates)
    (path,) = (starft_home / "cache" / "heads").glob("*.safetensors")
    path.write_bytes(b"garbage")
    torch.testing.assert_close(cached_zero_shot_head(tiny, classes, templates), first)


def test_shipped_template_sets() -> None:
    assert {"imagenet80", "ensemble", "single", "waterbirds"} <= set(template_set_names())
    assert len(load_templates("imagenet80")) == 80
    assert load_templates("single") == ["a photo of a {}."]
    assert load_templates("waterbirds") == ["This is a picture of a {}."]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a {} here", "", "# comment", "the {c} there"], ["a {} here", "the {} there"]),
        (["a {}", "a {}", "b {}"], ["a {}", "b {}"]),
    ],
)
def test_parse_templates(lines: list[str], expected: list[str]) -> None:
    assert parse_templates(lines, "test") == expected


@pytest.mark.parametrize("line", ["no slot", "{} and {}", "a {x} b", "a {c} {}", "brace } only {}"])
def test_template_without_exactly_one_slot_is_an_error(line: str) -> None:
    with pytest.raises(TemplateError, match="exactly one slot"):
        parse_templates([line], "f.txt")


def test_unknown_template_set(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="unknown template set"):
        load_templates("nope")
    empty = tmp_path / "e.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(TemplateError, match="holds no templates"):
        load_templates(empty)


def test_fill_keeps_braces_in_class_names() -> None:
    assert fill("a photo of a {}.", "{weird} name") == "a photo of a {weird} name."


@pytest.mark.parametrize(
    ("labels", "needle"),
    [([], "no labels"), (["a", " "], "empty label"), (["a", "b", "a"], "duplicate labels: a"), (["a"], "two labels")],
)
def test_validate_labels(labels: list[str], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_labels(labels)
    assert needle in info.value.one_line()
