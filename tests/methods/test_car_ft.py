"""CAR-FT: context prompt weights and the KL regulariser against an independent float64 computation of the
paper's equation."""

from __future__ import annotations

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
