"""StarReg / KL / contrastive losses against METHOD.md's definitions, computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from starft_cli.losses import contrastive_loss, kl_regularizer, star_regularizer


def _feats(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def _reference(ti, tst, si, sst, scale, labels, masked):
    """METHOD.md literally, in float64: per row, KL over the other-class columns only."""
    n = ti.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        cols = [j for j in range(n) if not masked or labels[j] != labels[i]]
        if not cols:
            continue
        t = scale * (ti[i] @ tst[cols].T)
        s = scale * (si[i] @ sst[cols].T)
        p = torch.softmax(t, 0)
        total += (p * (torch.log(p) - torch.log_softmax(s, 0))).sum()
    return total / n


@pytest.mark.parametrize(
    ("labels", "masked"),
    [
        ([0, 1, 2, 3, 4, 5], True),
        ([0, 0, 1, 1, 2, 2], True),
        ([0, 0, 0, 1, 2, 2], True),
        ([0, 0, 1, 1, 2, 2], False),
    ],
)
def test_star_regularizer_matches_definition(labels, masked):
    n, d = len(labels), 8
    ti, tst, si, sst = (_feats(n, d, s) for s in range(4))
    y = torch.tensor(labels)
    scale = 50.0
    expected = _reference(ti, tst, si, sst, scale, labels, masked)
    got = star_regularizer(ti.float(), tst.float(), si.float(), sst.float(), scale, y, masked=masked)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert got.item() > 0


def test_masked_equals_pytorch_batchmean_formula():
    """With some rows partly masked, the result equals kl_div(log_softmax(S), softmax(T), 'batchmean')."""
    n, d = 6, 8
    ti, tst, si, sst = (_feats(n, d, s).float() for s in range(10, 14))
    y = torch.tensor([0, 0, 1, 1, 2, 3])
    t = 30.0 * ti @ tst.T
    s = 30.0 * si @ sst.T
    same = y[:, None] == y[None, :]
    t, s = t.masked_fill(same, -1e8), s.masked_fill(same, -1e8)
    expected = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    got = star_regularizer(ti, tst, si, sst, 30.0, y)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_all_same_class_gives_zero_not_nan_with_finite_gradients():
    n, d = 5, 8
    ti, tst = _feats(n, d, 1).float(), _feats(n, d, 2).float()
    si = _feats(n, d, 3).float().requires_grad_(True)
    sst = _feats(n, d, 4).float().requires_grad_(True)
    loss = star_regularizer(ti, tst, si, sst, 100.0, torch.zeros(n, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(si.grad).all() and torch.isfinite(sst.grad).all()
    assert si.grad.abs().sum().item() == 0.0


def test_half_precision_inputs_are_computed_in_float32():
    n, d = 6, 8
    feats = [_feats(n, d, s) for s in range(20, 24)]
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    full = star_regularizer(*(f.float() for f in feats), 100.0, y)
    half = star_regularizer(*(f.half() for f in feats), 100.0, y)
    assert half.dtype == torch.float32
    assert torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=2e-2, abs=1e-3)


def test_identical_teacher_and_student_give_zero():
    n, d = 6, 8
    img, txt = _feats(n, d, 30).float(), _feats(n, d, 31).float()
    y = torch.tensor([0, 1, 1, 2, 2, 0])
    assert star_regularizer(img, txt, img, txt, 100.0, y).abs().item() < 1e-6


def test_kl_variant_is_unmasked():
    n, d = 4, 8
    ti, tst, si, sst = (_feats(n, d, s).float() for s in range(40, 44))
    y = torch.tensor([0, 0, 0, 0])
    kl = kl_regularizer(ti, tst, si, sst, 20.0, y)
    expected = F.kl_div(F.log_softmax(20.0 * si @ sst.T, 1), F.softmax(20.0 * ti @ tst.T, 1), reduction="batchmean")
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 0  # the masked version of this all-same-class batch is exactly 0
    assert star_regularizer(ti, tst, si, sst, 20.0, y).item() == 0.0


def test_teacher_scale_is_fixed_and_gets_no_gradient():
    n, d = 4, 8
    ti, tst, si, sst = (_feats(n, d, s).float() for s in range(50, 54))
    scale = torch.tensor(30.0, requires_grad=True)
    star_regularizer(ti, tst, si.requires_grad_(), sst, scale, torch.tensor([0, 1, 2, 3])).backward()
    assert scale.grad is None


def test_contrastive_loss_uses_diagonal_targets_even_for_same_class():
    n, d = 4, 8
    img, txt = _feats(n, d, 60).float(), _feats(n, d, 61).float()
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    target = torch.arange(n)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert contrastive_loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-6)
