"""Each method's loss through the registry on a fixed small batch, against a float64 implementation of the paper's
equation written here (loops over rows, no product code), to 1e-5; and what each method declares."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from starft_cli.errors import ConfigError
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods import ClassifierBatch, RunContext, available, get_method, make_method
from starft_cli.train.step import Features

N, D, C = 6, 5, 3
LABELS = torch.tensor([0, 1, 1, 2, 0, 2])


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def _ctx(teacher_scale: float = 20.0) -> RunContext:
    class Teacher:  # only its logit scale is read by StarFT's set-up
        logit_scale = torch.tensor(math.log(teacher_scale))

    return RunContext(None, Teacher(), None, None, [], [], torch.device("cpu"), DistEnv())


def _kl_rows(t_img, t_sp, s_img, s_sp, scale, labels, masked):
    """mean_i KL(p_i || q_i), p_i / q_i the softmax over the kept columns j of scale * <img_i, sp_j>."""
    total = 0.0
    n = t_img.shape[0]
    for i in range(n):
        cols = [j for j in range(n) if not (masked and labels[j] == labels[i])]
        if not cols:
            continue
        t = [scale * float(t_img[i] @ t_sp[j]) for j in cols]
        s = [scale * float(s_img[i] @ s_sp[j]) for j in cols]
        zt = math.log(sum(math.exp(v) for v in t))
        zs = math.log(sum(math.exp(v) for v in s))
        total += sum(math.exp(a - zt) * ((a - zt) - (b - zs)) for a, b in zip(t, s, strict=True))
    return total / n


@pytest.mark.parametrize(("name", "masked"), [("starft", True), ("kl", False)])
def test_starft_and_kl_regularisers_match_the_equation(name: str, masked: bool):
    method = make_method(name)
    ctx = _ctx(teacher_scale=20.0)
    method.setup(ctx)
    s_img, s_sp, t_img, t_sp, cap = (_unit(N, D, k) for k in range(5))
    f = Features(s_img.float(), cap.float(), s_sp.float(), torch.tensor(10.0), t_img.float(), t_sp.float())
    got = method.regularizer(f, LABELS, ctx)
    want = _kl_rows(t_img, t_sp, s_img, s_sp, 20.0, LABELS.tolist(), masked)
    assert float(got) == pytest.approx(want, abs=1e-5)
    assert want > 1e-3


def _clip_loss(img, cap, scale):
    """FLYP / CLIP: (mean_i -log softmax_j(s <I_i, C_j>)[i] + mean_j -log softmax_i(s <I_i, C_j>)[j]) / 2."""
    n = img.shape[0]
    logits = [[scale * float(img[i] @ cap[j]) for j in range(n)] for i in range(n)]
    rows = sum(math.log(sum(math.exp(v) for v in logits[i])) - logits[i][i] for i in range(n)) / n
    cols = sum(math.log(sum(math.exp(logits[i][j]) for i in range(n))) - logits[j][j] for j in range(n)) / n
    return (rows + cols) / 2


def test_flyp_and_starft_totals_match_the_equation():
    from starft_cli.train.step import StarStep

    img, cap, s_sp, t_img, t_sp = (_unit(N, D, k) for k in range(10, 15))
    f = Features(img.float(), cap.float(), s_sp.float(), torch.tensor(12.0), t_img.float(), t_sp.float())
    for name, lam in (("flyp", 0.0), ("starft", 0.7)):
        method = make_method(name)
        step = StarStep(towers=None, clip=None, teacher=_ctx(20.0).teacher, tokenizer=None, pool=["{}"], method=method)
        out = step.loss(f, LABELS, lam, use_reg=name != "flyp", skipped=False)
        want = _clip_loss(img, cap, 12.0)
        if name == "starft":
            want += lam * _kl_rows(t_img, t_sp, img, s_sp, 20.0, LABELS.tolist(), True)
        assert float(out.loss) == pytest.approx(want, abs=1e-5), name


def _ce(logits, labels):
    n = logits.shape[0]
    return sum(math.log(sum(math.exp(float(v)) for v in logits[i])) - float(logits[i, labels[i]]) for i in range(n)) / n


@pytest.mark.parametrize("name", ["ft", "lp", "lp-ft", "l2-sp"])
def test_classifier_losses_are_the_cross_entropy(name: str):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(N, C, generator=g, dtype=torch.float64) * 4
    batch = ClassifierBatch(logits.float(), _unit(N, D, 1).float(), None, LABELS, step=0)
    parts = make_method(name).classifier_loss(batch, 0.0, _ctx())
    assert float(parts.total) == pytest.approx(_ce(logits, LABELS.tolist()), abs=1e-5)
    assert float(parts.reg) == 0.0


def test_l2_sp_penalty_matches_hand_computed_values():
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = torch.nn.Linear(2, 2, bias=False)
            self.transformer = torch.nn.Linear(2, 1, bias=False)  # the text tower: not pulled

    model = Tiny()
    with torch.no_grad():
        model.visual.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.transformer.weight.copy_(torch.tensor([[5.0, 6.0]]))
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
    method = make_method("l2-sp", {"alpha": 0.2, "beta": 0.1})
    ctx = RunContext(model, None, head, None, [], [], torch.device("cpu"), DistEnv())
    method.setup(ctx)
    with torch.no_grad():
        model.visual.weight.add_(torch.tensor([[1.0, 0.0], [-2.0, 0.5]]))  # ||w - w0||^2 = 1 + 4 + 0.25 = 5.25
        model.transformer.weight.add_(10.0)
    # alpha/2 * 5.25 + beta/2 * (1 + 1 + 0.25 + 4) = 0.525 + 0.3125
    assert float(method.weight_penalty(ctx).detach()) == pytest.approx(0.8375, abs=1e-6)
    method.weight_penalty(ctx).backward()
    torch.testing.assert_close(model.visual.weight.grad, 0.2 * torch.tensor([[1.0, 0.0], [-2.0, 0.5]]))
    assert model.transformer.weight.grad is None


def test_lp_ft_stages_and_learning_rates():
    method = make_method("lp-ft", {"lp_fraction": 0.25, "lp_lr": 1e-2})
    assert method.stages(8) == [("lp", 2), ("ft", 6)]
    assert [method.stage_at(s, 8)[0] for s in range(8)] == ["lp"] * 2 + ["ft"] * 6
    assert method.trainable("head.weight", "lp") and not method.trainable("visual.conv1.weight", "lp")
    assert method.trainable("visual.conv1.weight", "ft") and not method.trainable("transformer.x", "ft")
    # each stage: warm-up (1 step here: a tenth of the stage, at least 1) then cosine from its own peak
    assert method.learning_rate(0, 8, 1e-4, 10) == pytest.approx(1e-2)
    assert method.learning_rate(2, 8, 1e-4, 10) == pytest.approx(1e-4)
    assert method.learning_rate(7, 8, 1e-4, 10) < 1e-4 / 2


def test_what_methods_declare():
    methods = available()
    assert next(iter(methods)) == "starft"
    assert {"starft", "flyp", "ft", "kl", "lp", "lp-ft", "l2-sp"} <= set(methods)
    assert get_method("starft").needs_teacher and get_method("starft").needs_pool
    assert not get_method("flyp").needs_teacher and get_method("flyp").objective == "contrastive"
    assert get_method("lp").objective == "classifier" and not make_method("lp").trainable("visual.x", "main")
    for cls in methods.values():
        assert cls.source and cls.loss_doc and cls.title


def test_hyperparameters_are_checked():
    assert make_method("l2-sp").hp == {"alpha": 0.1, "beta": 0.0}
    assert make_method("l2-sp", {"alpha": "0.5"}).hp["alpha"] == 0.5
    with pytest.raises(ConfigError, match="no hyper-parameter 'alfa'") as info:
        make_method("l2-sp", {"alfa": 1})
    assert "alpha" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="must be a number"):
        make_method("l2-sp", {"alpha": "big"})
    with pytest.raises(ConfigError, match="must be <= 1"):
        make_method("lp-ft", {"lp_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown method 'starf'") as info:
        get_method("starf")
    assert "starft" in (info.value.hint or "")
