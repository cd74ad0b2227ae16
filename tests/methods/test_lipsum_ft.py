"""Lipsum-FT: the regulariser against an independent float64 computation of the paper's equation, and the
random-text sampler's determinism."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from starft_cli.errors import ConfigError
from starft_cli.train.methods.lipsum_ft import lipsum_regularizer, random_text_tokens

SOT, EOT = 49406, 49407


def _unit_rows(rng: random.Random, n: int, d: int) -> list[list[float]]:
    rows = []
    for _ in range(n):
        v = [rng.gauss(0.0, 1.0) for _ in range(d)]
        norm = math.sqrt(sum(x * x for x in v))
        rows.append([x / norm for x in v])
    return rows


def _reference(image: list[list[float]], teacher: list[list[float]], texts: list[list[float]], scale: float) -> float:
    """R = (1/n) sum_i (1/(2M)) sum_m (scale <f(x_i), g_m> - scale <f0(x_i), g_m>)^2, plain Python floats."""
    n, m_count = len(image), len(texts)
    total = 0.0
    for i in range(n):
        row = 0.0
        for m in range(m_count):
            e = scale * sum(a * b for a, b in zip(image[i], texts[m], strict=True))
            e0 = scale * sum(a * b for a, b in zip(teacher[i], texts[m], strict=True))
            row += (e - e0) ** 2
        total += row / (2 * m_count)
    return total / n


@pytest.mark.parametrize("scale", [100.0, 14.285])
def test_regularizer_matches_float64_reference(scale: float) -> None:
    rng = random.Random(7)
    image, teacher, texts = _unit_rows(rng, 5, 8), _unit_rows(rng, 5, 8), _unit_rows(rng, 7, 8)
    expected = _reference(image, teacher, texts, scale)
    got = lipsum_regularizer(
        torch.tensor(image, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(texts, dtype=torch.float64),
        scale,
    )
    assert expected > 1.0  # the batch is far from the teacher: a real, non-trivial value
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_regularizer_in_float32_close_to_reference_and_zero_at_the_teacher() -> None:
    rng = random.Random(3)
    image, teacher, texts = _unit_rows(rng, 4, 6), _unit_rows(rng, 4, 6), _unit_rows(rng, 80, 6)
    got = lipsum_regularizer(torch.tensor(image), torch.tensor(teacher), torch.tensor(texts), 100.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference(image, teacher, texts, 100.0), rel=1e-4)
    same = lipsum_regularizer(torch.tensor(teacher), torch.tensor(teacher), torch.tensor(texts), 100.0)
    assert same.item() == 0.0


def test_regularizer_gradient_matches_hand_derivative() -> None:
    """d R / d f(x_i) = (scale / (n M)) * sum_m (e_im - e0_im) g_m, written out by hand."""
    rng = random.Random(11)
    image, teacher, texts = _unit_rows(rng, 3, 5), _unit_rows(rng, 3, 5), _unit_rows(rng, 4, 5)
    scale = 50.0
    x = torch.tensor(image, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(
        lipsum_regularizer(
            x, torch.tensor(teacher, dtype=torch.float64), torch.tensor(texts, dtype=torch.float64), scale
        ),
        x,
    )[0]
    n, m_count, d = 3, 4, 5
    for i in range(n):
        for j in range(d):
            g = 0.0
            for m in range(m_count):
                e = scale * sum(a * b for a, b in zip(image[i], texts[m], strict=True))
                e0 = scale * sum(a * b for a, b in zip(teacher[i], texts[m], strict=True))
                g += (e - e0) * scale * texts[m][j]
            assert grad[i, j].item() == pytest.approx(g / (n * m_count), rel=1e-6, abs=1e-9)


def test_half_precision_inputs_give_a_float32_value() -> None:
    rng = random.Random(5)
    image, teacher, texts = _unit_rows(rng, 2, 4), _unit_rows(rng, 2, 4), _unit_rows(rng, 3, 4)
    got = lipsum_regularizer(
        torch.tensor(image).half(), torch.tensor(teacher).bfloat16(), torch.tensor(texts).half(), 100.0
    )
    assert got.dtype == torch.float32
    assert math.isfinite(got.item())


def test_random_texts_layout() -> None:
    tokens = random_text_tokens(0, 3, num_texts=80, text_length=8, context_length=77, sot_id=SOT, eot_id=EOT)
    assert tokens.shape == (80, 77) and tokens.dtype == torch.long
    assert (tokens[:, 0] == SOT).all()
    body = tokens[:, 1:9]
    assert (body >= 0).all() and (body < SOT).all()
    assert (tokens[:, 9] == EOT).all()
    assert (tokens[:, 10:] == 0).all()
    # a text tower that pools at the largest id (CLIP's argmax pooling) pools at the end-of-text token
    assert (tokens.argmax(dim=1) == 9).all()
    # the draws cover the vocabulary (not a constant or a narrow range)
    assert body.unique().numel() > 600 and int(body.max()) > 40_000


def test_random_texts_are_a_function_of_seed_and_step_only() -> None:
    args = {"num_texts": 16, "text_length": 8, "context_length": 32, "sot_id": SOT, "eot_id": EOT}
    torch.manual_seed(123)
    a = random_text_tokens(5, 10, **args)
    torch.manual_seed(999)  # the global RNG plays no part
    torch.rand(100)
    b = random_text_tokens(5, 10, **args)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_text_tokens(5, 11, **args))  # a new draw every step
    assert not torch.equal(a, random_text_tokens(6, 10, **args))  # and per seed


def test_random_texts_that_do_not_fit_the_context_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"text_length 31 does not fit .* 32 tokens") as info:
        random_text_tokens(0, 0, num_texts=4, text_length=31, context_length=32, sot_id=SOT, eot_id=EOT)
    assert "at most 30" in info.value.one_line()
    with pytest.raises(ConfigError, match="at least one random text"):
        random_text_tokens(0, 0, num_texts=0, text_length=8, context_length=32, sot_id=SOT, eot_id=EOT)


# --- the registered method -------------------------------------------------------------------------------------


def test_method_total_is_cross_entropy_plus_lambda_times_the_regularizer(tiny) -> None:
    from starft_cli.train.methods import ClassifierBatch, make_method
    from tests.methods._helpers import context, cross_entropy64

    ctx = context(tiny, ["a photo of a {}."], seed=5)
    method = make_method("lipsum-ft", {"num_texts": 6, "text_length": 5})
    method.setup(ctx)
    method.begin_step(ctx, 3)
    # the step's texts: the (seed, step) draw through the frozen text tower (open_clip's own, untrimmed, encoder)
    tokens = random_text_tokens(5, 3, 6, 5, 32, SOT, EOT)
    with torch.no_grad():
        expected_texts = ctx.teacher.encode_text(tokens, normalize=True)
    assert torch.allclose(method.texts, expected_texts, atol=1e-5)
    assert method.scale == pytest.approx(ctx.teacher.logit_scale.exp().item())

    rng = random.Random(0)
    logits = [[rng.gauss(0, 3) for _ in range(3)] for _ in range(4)]
    labels = [0, 2, 1, 2]
    image, teacher = _unit_rows(rng, 4, 32), _unit_rows(rng, 4, 32)
    batch = ClassifierBatch(
        torch.tensor(logits), torch.tensor(image), torch.tensor(teacher), torch.tensor(labels), step=3
    )
    parts = method.classifier_loss(batch, 0.7, ctx)
    ce = cross_entropy64(logits, labels)
    reg = _reference(image, teacher, method.texts.double().tolist(), method.scale)
    assert parts.main.item() == pytest.approx(ce, rel=1e-5)
    assert parts.reg.item() == pytest.approx(reg, rel=1e-5)
    assert parts.total.item() == pytest.approx(ce + 0.7 * reg, rel=1e-5)
    # a new step, new texts; weight 0: the regulariser is skipped (logged as such) and the loss is the CE
    method.begin_step(ctx, 4)
    assert not torch.allclose(method.texts, expected_texts)
    zero = method.classifier_loss(batch, 0.0, ctx)
    assert zero.total.item() == pytest.approx(ce, rel=1e-5) and math.isnan(zero.reg.item())


def test_finetune_lipsum_ft_runs_and_logs_a_finite_regularizer(tmp_path, class_folders) -> None:
    from tests.methods._helpers import finetune, metrics

    run = tmp_path / "run"
    result = finetune(
        "--data", f"folder:{class_folders}", "--method", "lipsum-ft", "--lambda-schedule", "constant",
        "--hp", "num_texts=16", "--batch-size", "6", "--epochs", "1", "--out", str(run),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reg"]) for r in records)
    assert [r["lambda"] for r in records] == [1.0, 1.0]  # the paper's default weight
    assert records[0]["reg"] == pytest.approx(0.0, abs=1e-6)  # step 1: the student is the zero-shot model
    assert records[1]["reg"] > 0  # step 2: it moved
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "lipsum-ft" and config["hparams"] == {"num_texts": 16, "text_length": 8}


def test_finetune_lipsum_ft_refuses_texts_longer_than_the_context(tmp_path, class_folders) -> None:
    from tests.methods._helpers import finetune

    result = finetune(
        "--data", f"folder:{class_folders}", "--method", "lipsum-ft", "--hp", "text_length=31",
        "--batch-size", "6", "--epochs", "1", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.exit_code == 2  # a bad setting, like every other hyper-parameter error
    assert "text_length 31 does not fit the model's text context of 32 tokens" in result.stderr
    assert "Traceback" not in result.output


def test_help_method_lists_and_describes_lipsum_ft() -> None:
    from tests.methods._helpers import app, runner

    listing = runner.invoke(app, ["finetune", "--help-method"]).stdout
    assert any(line.startswith("lipsum-ft ") for line in listing.splitlines())
    card = runner.invoke(app, ["finetune", "--method", "lipsum-ft", "--help-method"])
    assert card.exit_code == 0, card.output
    assert "Nam, Heo & Lee" in card.stdout and "ICLR 2024" in card.stdout
    assert "--lambda: regulariser weight, default 1 " in card.stdout
    assert "--hp num_texts=VALUE: random texts drawn per optimizer step (M) (default 80)" in card.stdout
    assert "--hp text_length=VALUE: random tokens per text (L) (default 8)" in card.stdout
