"""CAR-FT: context prompt weights and the KL regulariser against an independent float64 computation of the
paper's equation."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from starft_cli.train.methods.car_ft import car_ft_regularizer, context_prompt_weights


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _unit_rows(rng: random.Random, n: int, d: int) -> list[list[float]]:
    return [_unit([rng.gauss(0.0, 1.0) for _ in range(d)]) for _ in range(n)]


def _reference_contexts(features: list[list[list[float]]]) -> list[list[float]]:
    """w_k = normalise(mean_c normalise(features[c][k])), plain Python floats."""
    n_cls, n_ctx, d = len(features), len(features[0]), len(features[0][0])
    out = []
    for k in range(n_ctx):
        acc = [0.0] * d
        for c in range(n_cls):
            u = _unit(features[c][k])
            acc = [a + b for a, b in zip(acc, u, strict=True)]
        out.append(_unit([a / n_cls for a in acc]))
    return out


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(x - top) for x in z]
    s = sum(e)
    return [x / s for x in e]


def _reference_kl(image, teacher, contexts, scale) -> float:
    """(1/n) sum_i KL(p0_i || p_i), p_i = softmax_k(scale <f(x_i), w_k>), p0_i likewise with the zero-shot f0."""
    total = 0.0
    for f, f0 in zip(image, teacher, strict=True):
        p = _softmax([scale * sum(a * b for a, b in zip(f, w, strict=True)) for w in contexts])
        p0 = _softmax([scale * sum(a * b for a, b in zip(f0, w, strict=True)) for w in contexts])
        total += sum(q0 * (math.log(q0) - math.log(q)) for q, q0 in zip(p, p0, strict=True))
    return total / len(image)


def test_context_prompt_weights_match_float64_reference() -> None:
    rng = random.Random(1)
    raw = [[[rng.gauss(0.0, 2.0) for _ in range(6)] for _ in range(4)] for _ in range(3)]  # (C=3, K=4, d=6), raw
    expected = _reference_contexts(raw)
    got = context_prompt_weights(torch.tensor(raw, dtype=torch.float64))
    assert got.shape == (4, 6)
    for k in range(4):
        for j in range(6):
            assert got[k, j].item() == pytest.approx(expected[k][j], rel=1e-5, abs=1e-5)
    assert context_prompt_weights(torch.tensor(raw)).dtype == torch.float32


@pytest.mark.parametrize("scale", [100.0, 1.0])
def test_regularizer_matches_float64_reference(scale: float) -> None:
    rng = random.Random(2)
    raw = [[[rng.gauss(0.0, 1.0) for _ in range(8)] for _ in range(5)] for _ in range(3)]
    contexts = _reference_contexts(raw)
    image, teacher = _unit_rows(rng, 6, 8), _unit_rows(rng, 6, 8)
    expected = _reference_kl(image, teacher, contexts, scale)
    got = car_ft_regularizer(
        torch.tensor(image, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        context_prompt_weights(torch.tensor(raw, dtype=torch.float64)),
        scale,
    )
    assert expected > 1e-3
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_kl_direction_is_zero_shot_target() -> None:
    """KL(p0 || p), not KL(p || p0): the two differ on this batch, and the product matches the first."""
    rng = random.Random(4)
    contexts = _unit_rows(rng, 5, 6)
    image, teacher = _unit_rows(rng, 3, 6), _unit_rows(rng, 3, 6)
    forward = _reference_kl(image, teacher, contexts, 30.0)
    reverse = _reference_kl(teacher, image, contexts, 30.0)
    assert abs(forward - reverse) > 1e-2
    got = car_ft_regularizer(
        torch.tensor(image, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(contexts, dtype=torch.float64),
        30.0,
    ).item()
    assert got == pytest.approx(forward, rel=1e-5)


def test_regularizer_is_zero_at_the_teacher_and_float32_under_half_inputs() -> None:
    rng = random.Random(9)
    contexts = torch.tensor(_unit_rows(rng, 80, 16))
    teacher = torch.tensor(_unit_rows(rng, 4, 16))
    assert car_ft_regularizer(teacher, teacher, contexts, 100.0).item() == pytest.approx(0.0, abs=1e-6)
    image = torch.tensor(_unit_rows(rng, 4, 16))
    got = car_ft_regularizer(image.half(), teacher.bfloat16(), contexts.half(), 100.0)
    assert got.dtype == torch.float32 and math.isfinite(got.item()) and got.item() > 0


def test_gradient_reaches_only_the_fine_tuned_features() -> None:
    rng = random.Random(10)
    contexts = torch.tensor(_unit_rows(rng, 5, 6), dtype=torch.float64)
    image = torch.tensor(_unit_rows(rng, 3, 6), dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(_unit_rows(rng, 3, 6), dtype=torch.float64)
    car_ft_regularizer(image, teacher, contexts, 10.0).backward()
    # hand derivative: d KL_i / d f_i = (scale / n) * sum_k (p_ik - p0_ik) w_k
    scale, n = 10.0, 3
    for i in range(n):
        p = _softmax([scale * sum(a * b for a, b in zip(image[i].tolist(), w, strict=True)) for w in contexts.tolist()])
        p0 = _softmax(
            [scale * sum(a * b for a, b in zip(teacher[i].tolist(), w, strict=True)) for w in contexts.tolist()]
        )
        for j in range(6):
            g = sum((p[k] - p0[k]) * contexts[k, j].item() for k in range(5)) * scale / n
            assert image.grad[i, j].item() == pytest.approx(g, rel=1e-6, abs=1e-9)


# --- the registered method -------------------------------------------------------------------------------------

TEMPLATES = ["a photo of a {}.", "a sketch of a {}.", "a blurry photo of the {}.", "a toy {}."]


def test_method_contexts_and_total_is_cross_entropy_plus_lambda_times_kl(tiny) -> None:
    from starft_cli.train.methods import ClassifierBatch, make_method
    from tests.methods._helpers import CLASSES, context, cross_entropy64

    ctx = context(tiny, TEMPLATES)
    method = make_method("car-ft")
    method.setup(ctx)
    # once per run: the context weights from the frozen text tower (open_clip's own encoder, untrimmed)
    with torch.no_grad():
        raw = [
            ctx.teacher.encode_text(tiny.tokenizer([t.replace("{}", c) for t in TEMPLATES]), normalize=False).tolist()
            for c in CLASSES
        ]
    expected = _reference_contexts(raw)
    assert method.contexts.shape == (4, 32)
    assert torch.allclose(method.contexts.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    assert method.scale == pytest.approx(ctx.teacher.logit_scale.exp().item())

    rng = random.Random(0)
    logits = [[rng.gauss(0, 3) for _ in range(3)] for _ in range(4)]
    labels = [1, 0, 2, 2]
    image, teacher = _unit_rows(rng, 4, 32), _unit_rows(rng, 4, 32)
    batch = ClassifierBatch(torch.tensor(logits), torch.tensor(image), torch.tensor(teacher), torch.tensor(labels), 0)
    parts = method.classifier_loss(batch, 0.3, ctx)
    ce = cross_entropy64(logits, labels)
    kl = _reference_kl(image, teacher, method.contexts.double().tolist(), method.scale)
    assert kl > 1e-3
    assert parts.main.item() == pytest.approx(ce, rel=1e-5)
    assert parts.reg.item() == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert parts.total.item() == pytest.approx(ce + 0.3 * kl, rel=1e-5)
    zero = method.classifier_loss(batch, 0.0, ctx)  # weight 0: skipped, logged as such
    assert zero.total.item() == pytest.approx(ce, rel=1e-5) and math.isnan(zero.reg.item())


def test_method_needs_two_contexts(tiny) -> None:
    from starft_cli.errors import ConfigError
    from starft_cli.train.methods import make_method
    from tests.methods._helpers import context

    with pytest.raises(ConfigError, match="at least two context prompts and the run's zero-shot templates has 1"):
        make_method("car-ft").setup(context(tiny, ["a photo of a {}."]))
    method = make_method("car-ft", {"contexts": "imagenet80"})  # a shipped set instead of the run's templates
    method.setup(context(tiny, ["a photo of a {}."]))
    assert method.contexts.shape == (80, 32)


def test_finetune_car_ft_runs_and_logs_a_finite_regularizer(tmp_path, class_folders) -> None:
    from tests.methods._helpers import finetune, metrics

    run = tmp_path / "run"
    result = finetune(
        "--data", f"folder:{class_folders}", "--method", "car-ft", "--lambda-schedule", "constant",
        "--batch-size", "6", "--epochs", "1", "--out", str(run),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reg"]) for r in records)
    assert [r["lambda"] for r in records] == [1.0, 1.0]
    assert records[0]["reg"] == pytest.approx(0.0, abs=1e-6)  # step 1: the student is the zero-shot model
    assert records[1]["reg"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "car-ft" and config["hparams"] == {"contexts": "zero-shot"}


def test_finetune_car_ft_with_one_context_is_refused(tmp_path, class_folders) -> None:
    from tests.methods._helpers import finetune

    result = finetune(
        "--data", f"folder:{class_folders}", "--method", "car-ft", "--hp", "contexts=single",
        "--batch-size", "6", "--epochs", "1", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "car-ft needs at least two context prompts and 'single' has 1" in result.stderr
    assert (
        "contexts=imagenet80 (--hp NAME=VALUE)" not in result.stderr
        and "--hp NAME=VALUE" in result.stderr
        and "Traceback" not in result.output
    )


def test_help_method_lists_and_describes_car_ft() -> None:
    from tests.methods._helpers import app, runner

    listing = runner.invoke(app, ["finetune", "--help-method"]).stdout
    assert any(line.startswith("car-ft ") for line in listing.splitlines())
    card = runner.invoke(app, ["finetune", "--method", "car-ft", "--help-method"])
    assert card.exit_code == 0, card.output
    assert "Mao, Chen, Jia, Zhang, Xue & Li" in card.stdout and "KL(softmax_k" in card.stdout
    assert "--lambda: regulariser weight, default 1 " in card.stdout
    assert "--hp contexts=VALUE" in card.stdout and "(default zero-shot)" in card.stdout
