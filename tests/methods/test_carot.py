"""CaRot's formulas against an independent float64 transcription of the paper's equations (explicit loops)."""

from __future__ import annotations

import math

import pytest
import torch

from starft_cli.errors import UsageError
from starft_cli.train.methods import carot

# ---------------------------------------------------------------------------------------------------------------
# Independent float64 references, written from the equations with explicit loops (no product code).


def _ref_orthogonality(w: list[list[float]]) -> float:
    """sqrt(sum_{a,b} ((W^T W)_{ab} - delta_ab)^2) for W given as rows (width x embed)."""
    width, embed = len(w), len(w[0])
    total = 0.0
    for a in range(embed):
        for b in range(embed):
            gram = sum(w[k][a] * w[k][b] for k in range(width))
            target = 1.0 if a == b else 0.0
            total += (gram - target) ** 2
    return math.sqrt(total)


def _ref_cross(wv: list[list[float]], wt: list[list[float]]) -> float:
    """sqrt(sum_{i,j} (sum_k Wv[i][k] Wt[j][k])^2)."""
    total = 0.0
    for row_v in wv:
        for row_t in wt:
            total += sum(a * b for a, b in zip(row_v, row_t, strict=True)) ** 2
    return math.sqrt(total)


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    z = sum(exps)
    return [e / z for e in exps]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _ref_self_distillation(img, txt, s, t_img, t_txt, t) -> float:
    """(1/N) sum_i [ -sum_j p^{I->T}_ij log q^{I->T}_ij - sum_j p^{T->I}_ij log q^{T->I}_ij ] with
    p from the teacher's in-batch similarities (teacher's scale), q from the student's (student's scale)."""
    n = len(img)
    total = 0.0
    for i in range(n):
        p_i2t = _softmax([t * _dot(t_img[i], t_txt[j]) for j in range(n)])
        q_i2t = _softmax([s * _dot(img[i], txt[j]) for j in range(n)])
        p_t2i = _softmax([t * _dot(t_txt[i], t_img[j]) for j in range(n)])
        q_t2i = _softmax([s * _dot(txt[i], img[j]) for j in range(n)])
        total -= sum(p_i2t[j] * math.log(q_i2t[j]) for j in range(n))
        total -= sum(p_t2i[j] * math.log(q_t2i[j]) for j in range(n))
    return total / n


def _normalised(gen: torch.Generator, n: int, d: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x]


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (5, 5), (8, 3)])
def test_orthogonality_penalty_matches_reference(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.4
    expected = _ref_orthogonality(_rows(w))
    assert carot.orthogonality_penalty(w).item() == pytest.approx(expected, abs=1e-5, rel=1e-5)
    got32 = carot.orthogonality_penalty(w.float())
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_orthogonality_penalty_hand_values() -> None:
    # Orthonormal columns: zero, with a finite (zero) gradient.
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    value = carot.orthogonality_penalty(w)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(w.grad, torch.zeros_like(w))
    # W = 2 I_2: W^T W - I = 3 I, Frobenius norm sqrt(9 + 9) (not squared).
    assert carot.orthogonality_penalty(2 * torch.eye(2)).item() == pytest.approx(math.sqrt(18.0), abs=1e-6)


def test_orthogonality_gradient_matches_reference_derivative() -> None:
    # d/dW ||W^T W - I||_F = 2 W (W^T W - I) / ||W^T W - I||_F, written out here in float64.
    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True)
    carot.orthogonality_penalty(w).backward()
    rows = _rows(w.detach())
    norm = _ref_orthogonality(rows)
    for i in range(5):
        for a in range(3):
            grad = 0.0
            for b in range(3):
                gram = sum(rows[k][a] * rows[k][b] for k in range(5))
                grad += 2.0 * rows[i][b] * (gram - (1.0 if a == b else 0.0))
            assert w.grad[i, a].item() == pytest.approx(grad / norm, abs=1e-5)


def test_cross_modal_penalty_matches_reference() -> None:
    gen = torch.Generator().manual_seed(11)
    wv = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    wt = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    expected = _ref_cross(_rows(wv), _rows(wt))
    assert carot.cross_modal_penalty(wv, wt).item() == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert carot.cross_modal_penalty(wv.float(), wt.float()).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("n", "d", "s", "t"), [(4, 3, 10.0, 7.0), (6, 5, 100.0, 100.0), (3, 8, 1.0, 30.0)])
def test_self_distillation_matches_reference(n: int, d: int, s: float, t: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + d)
    img, txt = _normalised(gen, n, d), _normalised(gen, n, d)
    t_img, t_txt = _normalised(gen, n, d), _normalised(gen, n, d)
    expected = _ref_self_distillation(_rows(img), _rows(txt), s, _rows(t_img), _rows(t_txt), t)
    got64 = carot.self_distillation_loss(img, txt, s, t_img, t_txt, t)
    assert got64.item() == pytest.approx(expected, abs=1e-5, rel=1e-5)
    got32 = carot.self_distillation_loss(
        img.float(), txt.float(), torch.tensor(s), t_img.float(), t_txt.float(), torch.tensor(t)
    )
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, abs=1e-4, rel=1e-5)


def test_self_distillation_identical_models_is_entropy_with_zero_gradient() -> None:
    # Teacher == student: the loss is the two directions' entropies and the student's gradient vanishes.
    gen = torch.Generator().manual_seed(5)
    img, txt = _normalised(gen, 4, 3), _normalised(gen, 4, 3)
    student_img = img.clone().requires_grad_(True)
    loss = carot.self_distillation_loss(student_img, txt, 5.0, img, txt, 5.0)
    loss.backward()
    entropy = 0.0
    rows_i, rows_t = _rows(img), _rows(txt)
    for i in range(4):
        for p in (
            _softmax([5.0 * _dot(rows_i[i], rows_t[j]) for j in range(4)]),
            _softmax([5.0 * _dot(rows_t[i], rows_i[j]) for j in range(4)]),
        ):
            entropy -= sum(x * math.log(x) for x in p)
    assert loss.item() == pytest.approx(entropy / 4, abs=1e-5)
    assert student_img.grad.abs().max().item() < 1e-12


def test_self_distillation_split_rows_sum_to_whole_batch() -> None:
    # A batch split over two "processes": each computes its rows against the gathered columns, normalised by
    # the global batch size; the two shares add up to the whole batch's loss (what the mean over ranks of the
    # per-rank losses times world size gives).
    gen = torch.Generator().manual_seed(9)
    n, d = 6, 4
    img, txt, t_img, t_txt = (_normalised(gen, n, d) for _ in range(4))
    whole = carot.self_distillation_loss(img, txt, 3.0, t_img, t_txt, 4.0)
    shares = [
        carot.self_distillation_loss(
            img[rows],
            txt[rows],
            3.0,
            t_img[rows],
            t_txt[rows],
            4.0,
            image_columns=img,
            text_columns=txt,
            teacher_image_columns=t_img,
            teacher_text_columns=t_txt,
            normalizer=n,
        )
        for rows in (slice(0, 3), slice(3, 6))
    ]
    assert (shares[0] + shares[1]).item() == pytest.approx(whole.item(), abs=1e-12)


def test_self_distillation_teacher_carries_no_gradient() -> None:
    gen = torch.Generator().manual_seed(2)
    img, txt = _normalised(gen, 3, 4), _normalised(gen, 3, 4)
    t_img = _normalised(gen, 3, 4).requires_grad_(True)
    t_txt = _normalised(gen, 3, 4).requires_grad_(True)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    loss = carot.self_distillation_loss(img.requires_grad_(True), txt, scale, t_img, t_txt, 3.0)
    loss.backward()
    assert t_img.grad is None and t_txt.grad is None
    assert img.grad is not None and scale.grad is not None  # the student's logit scale is trained by SD too


def test_ema_momentum_schedule() -> None:
    # 1000 steps, ramp over the first 200: 0.05 at step 0, half-way (0.475) at step 100, then 0.9.
    assert carot.ema_momentum(0, 1000) == pytest.approx(0.05)
    assert carot.ema_momentum(100, 1000) == pytest.approx(0.05 + 0.85 * 0.5)
    assert carot.ema_momentum(199, 1000) == pytest.approx(0.05 + 0.85 * 199 / 200)
    assert carot.ema_momentum(200, 1000) == 0.9
    assert carot.ema_momentum(999, 1000) == 0.9
    assert carot.ema_momentum(3, 10, start=0.0, end=1.0, warmup=0.5) == pytest.approx(0.6)
    assert carot.ema_momentum(0, 10, warmup=0.0) == 0.9  # no ramp


def test_ema_due() -> None:
    assert [s for s in range(12) if carot.ema_due(s, 5)] == [0, 5, 10]
    assert not any(carot.ema_due(s, 0) for s in range(5))


def test_ema_update_hand_computed() -> None:
    teacher = [torch.tensor([1.0, 2.0, -4.0]), torch.tensor([[0.5]])]
    student = [torch.tensor([3.0, 0.0, 4.0]), torch.tensor([[2.5]])]
    carot.ema_update_(teacher, student, 0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * 2 + 0 = 1.5; 0.75 * -4 + 0.25 * 4 = -2; 0.75 * 0.5 + 0.25 * 2.5 = 1.0
    assert torch.equal(teacher[0], torch.tensor([1.5, 1.5, -2.0]))
    assert torch.equal(teacher[1], torch.tensor([[1.0]]))
    assert torch.equal(student[0], torch.tensor([3.0, 0.0, 4.0]))  # the student is untouched
    carot.ema_update_(teacher, student, 0.0)  # momentum 0 copies the student
    assert torch.equal(teacher[0], student[0]) and torch.equal(teacher[1], student[1])
    with pytest.raises(ValueError, match="2 teacher tensors but 1 student"):
        carot.ema_update_(teacher, student[:1], 0.5)


def test_visual_projection_of_the_tiny_model(tiny) -> None:
    proj = carot.visual_projection(tiny.model)
    assert proj is tiny.model.visual.proj
    assert tuple(proj.shape) == (64, 32)  # starft-tiny: vision width 64, embed_dim 32


def test_visual_projection_missing_is_a_usage_error() -> None:
    class NoProj(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = torch.nn.Identity()

    with pytest.raises(UsageError, match="linear projection"):
        carot.visual_projection(NoProj())


# ---------------------------------------------------------------------------------------------------------------
# The registered method on the tiny model.


def _method_and_ctx(tiny, hp: dict | None = None, total_steps: int = 10):
    import copy

    from starft_cli.train.distributed import DistEnv
    from starft_cli.train.methods import RunContext, make_method

    student = copy.deepcopy(tiny.model)
    ctx = RunContext(student, None, None, tiny.tokenizer, [], [], torch.device("cpu"), DistEnv(), 0, total_steps)
    method = make_method("carot", hp or {})
    method.setup(ctx)
    return method, ctx


def _perturb(model: torch.nn.Module, seed: int, size: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=gen))


def test_method_declares_the_paper_defaults() -> None:
    from starft_cli.train.methods import get_method, make_method

    cls = get_method("carot")
    assert (cls.objective, cls.regularized, cls.needs_teacher, cls.needs_pool) == ("contrastive", True, False, False)
    assert cls.default_lambda == 1.5 and "NeurIPS 2024" in cls.source
    assert make_method("carot").hp == {
        "lambda_oc": 0.2,
        "ema_every": 500,
        "momentum_start": 0.05,
        "momentum_end": 0.9,
        "momentum_warmup": 0.2,
        "lambda_cross": 0.05,  # the authors' command (--cross_fnorm 0.05), not their args.py default of 0
    }


@pytest.mark.parametrize(
    ("hp", "message"),
    [
        ({"momentum_end": 1.5}, "carot hyper-parameter 'momentum_end' must be <= 1"),
        ({"ema_every": 2.5}, "carot hyper-parameter 'ema_every' must be a whole number"),
        ({"lambda_oc": -0.1}, "carot hyper-parameter 'lambda_oc' must be >= 0"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp: dict, message: str) -> None:
    from starft_cli.errors import ConfigError
    from starft_cli.train.methods import make_method

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_method("carot", hp)


def test_weight_penalty_is_the_weighted_reference(tiny) -> None:
    method, ctx = _method_and_ctx(tiny, {"lambda_oc": 0.3, "lambda_cross": 0.07})
    wv = _rows(ctx.student.visual.proj.detach().double())
    wt = _rows(ctx.student.text_projection.detach().double())
    expected = 0.3 * _ref_orthogonality(wv) + 0.07 * _ref_cross(wv, wt)
    penalty = method.weight_penalty(ctx)
    assert penalty.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    penalty.backward()
    assert ctx.student.visual.proj.grad.abs().sum() > 0 and ctx.student.text_projection.grad.abs().sum() > 0
    none, ctx2 = _method_and_ctx(tiny, {"lambda_oc": 0.0, "lambda_cross": 0.0})
    assert none.weight_penalty(ctx2) is None  # both weights 0: no term at all


def test_setup_refuses_a_model_without_an_image_projection(tiny) -> None:
    method, ctx = _method_and_ctx(tiny)
    ctx.student.visual.proj = None
    with pytest.raises(UsageError, match="linear projection"):
        method.setup(ctx)


def test_teacher_features_and_regularizer_use_the_ema_model(tiny) -> None:
    from starft_cli.train.step import Features

    method, ctx = _method_and_ctx(tiny)
    _perturb(ctx.student, 1)  # the student moves away from its EMA teacher
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tokens = tiny.tokenizer(["a photo of a dog.", "a photo of a cat.", "a photo of a dog.", "a car"])  # a repeat
    method.begin_step(ctx, 0)
    assert method.teacher_features(ctx, images, tokens) == {}  # step 0: the teacher is the student, no term
    method.begin_step(ctx, 1)
    extra = method.teacher_features(ctx, images, tokens)
    with torch.no_grad():
        want_img = method.ema.encode_image(images, normalize=True)
        want_cap = method.ema.encode_text(tokens, normalize=True)
        student_img = ctx.student.encode_image(images, normalize=True)
    torch.testing.assert_close(extra["ema_image"], want_img)
    torch.testing.assert_close(extra["ema_caption"], want_cap, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(extra["ema_image"], student_img)  # it is the EMA model, not the student

    gen = torch.Generator().manual_seed(4)
    img, cap = _normalised(gen, 4, 32).float(), _normalised(gen, 4, 32).float()
    scale = torch.tensor(7.0)
    feats = Features(img, cap, None, scale, None, None, extra)
    reg = method.regularizer(feats, torch.tensor([0, 1, 1, 2]), ctx)
    t = float(method.ema.logit_scale.exp())
    expected = _ref_self_distillation(
        _rows(img), _rows(cap), 7.0, _rows(extra["ema_image"]), _rows(extra["ema_caption"]), t
    )
    assert reg.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    feats.extra = {}
    assert method.regularizer(feats, torch.tensor([0, 1, 1, 2]), ctx).item() == 0.0


def test_end_step_updates_the_ema_teacher_on_schedule(tiny) -> None:
    hp = {"ema_every": 2, "momentum_start": 0.1, "momentum_end": 0.5, "momentum_warmup": 0.5}
    method, ctx = _method_and_ctx(tiny, hp, total_steps=10)  # ramp over steps 0..4
    start = [p.detach().clone() for p in method.ema.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, ctx.student.parameters(), strict=True))  # a copy
    _perturb(ctx.student, 2)
    student = [p.detach().clone() for p in ctx.student.parameters()]
    method.end_step(ctx, 0)  # m = 0.1
    after0 = [p.detach().clone() for p in method.ema.parameters()]
    for e, t0, s in zip(after0, start, student, strict=True):
        torch.testing.assert_close(e, 0.1 * t0 + 0.9 * s, atol=1e-6, rtol=0)
    method.end_step(ctx, 1)  # not due
    assert all(torch.equal(a, b) for a, b in zip(after0, method.ema.parameters(), strict=True))
    method.end_step(ctx, 2)  # m = 0.1 + 0.4 * 2 / 5 = 0.26
    for e, t1, s in zip(method.ema.parameters(), after0, student, strict=True):
        torch.testing.assert_close(e, 0.26 * t1 + 0.74 * s, atol=1e-6, rtol=0)
    assert all(not p.requires_grad for p in method.ema.parameters()) and not method.ema.training


def test_state_dict_round_trip_and_mismatch(tiny) -> None:
    from starft_cli.errors import CheckpointError

    method, ctx = _method_and_ctx(tiny, {"ema_every": 1})
    _perturb(ctx.student, 5)
    method.end_step(ctx, 0)
    state = method.state_dict()
    assert state and all(k.startswith("ema.") for k in state)
    other, _ = _method_and_ctx(tiny)
    other.load_state_dict(state)
    for (name, a), b in zip(other.ema.named_parameters(), method.ema.parameters(), strict=True):
        assert torch.equal(a, b), name
    broken = dict(state)
    broken.pop(next(iter(broken)))
    with pytest.raises(CheckpointError, match="carot EMA teacher does not match"):
        other.load_state_dict(broken)


# ---------------------------------------------------------------------------------------------------------------
# `starft finetune --method carot` end to end, exact resume, and two processes = one.

FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "2", "--lr", "1e-4", "--device", "cpu"]


def test_finetune_carot_cli_run(tmp_path, class_folders) -> None:
    import json

    from typer.testing import CliRunner

    from starft_cli.cli.app import app

    run = tmp_path / "run"
    args = [*FAST, "--data", f"folder:{class_folders}", "--batch-size", "4", "--epochs", "1", "--out", str(run)]
    args += ["--method", "carot", "--hp", "ema_every=1", "--hp", "lambda_cross=0.05", "--lambda-schedule", "constant"]
    result = CliRunner().invoke(app, ["finetune", *args])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # 12 images / 4
    for r in records:
        for key in ("loss", "contrastive", "reg", "penalty", "lambda"):
            assert r[key] is not None and math.isfinite(r[key]), (r["step"], key)
        assert r["lambda"] == 1.5 and r["penalty"] > 0
        assert r["loss"] == pytest.approx(r["contrastive"] + 1.5 * r["reg"] + r["penalty"], rel=1e-6)
    assert records[0]["reg"] == 0.0  # step 0: the EMA teacher is still the student (the authors skip the term)
    assert all(r["reg"] > 0 for r in records[1:])
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "carot" and config["hparams"]["ema_every"] == 1
    assert config["hparams"]["lambda_cross"] == 0.05 and config["hparams"]["lambda_oc"] == 0.2
    state = torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert state["method"] and all(k.startswith("ema.") for k in state["method"])
    card = CliRunner().invoke(app, ["finetune", "--method", "carot", "--help-method"])
    assert card.exit_code == 0 and "Oh et al." in card.stdout and "lambda_oc" in card.stdout


_LABELS = [0, 1, 1, 2, 3, 0, 2, 2]
_CLASSES = ["cat", "dog", "car", "tree"]


def _ddp_loss_and_grads(env, accum: int, freeze_text: bool):
    """The CaRot step of the global batch (this process's share of it, in ``accum`` micro-batches) with the weight
    penalty joined to the last backward, as the loop does; the EMA teacher lags the student."""
    from starft_cli.device import cuda_call_args
    from starft_cli.models import load
    from starft_cli.train.methods import make_method
    from starft_cli.train.step import MicroBatch, StarStep, Towers

    torch.set_num_threads(1)
    loaded = load("starft-tiny:none", seed=0)
    student = loaded.model
    method = make_method("carot", {"lambda_cross": 0.05})
    if freeze_text:  # before DDP is built: it fixes the set of trained parameters
        for name, p in student.named_parameters():
            if not (name.startswith("visual.") or name.startswith("logit_")):
                p.requires_grad_(False)
    towers = Towers(student, trim=True)
    wrapped = towers
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(towers, **cuda_call_args(torch.device("cpu")).ddp)
    # The step builds the method's context and calls its setup: the EMA teacher is the starting weights.
    step = StarStep(
        towers=wrapped, clip=student, teacher=None, tokenizer=loaded.tokenizer, pool=["{}"], method=method,
        freeze_text=freeze_text, env=env,
    )  # fmt: skip
    _perturb(student, 1, 0.02)  # the student moves on
    student.train()
    method.begin_step(step.ctx, 1)
    n = len(_LABELS)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    local = n // env.world_size
    part = slice(env.rank * local, (env.rank + 1) * local)
    ys = torch.tensor(_LABELS)[part]
    caps = [f"a photo of a {_CLASSES[i]}." for i in _LABELS[part]]
    tidx = torch.zeros(local, dtype=torch.long)
    left = [accum]

    def backward(loss: torch.Tensor) -> None:
        left[0] -= 1
        if left[0] == 0:
            loss = loss + method.weight_penalty(step.ctx)
        loss.backward()

    k = local // accum
    imgs = images[part]
    micro = [MicroBatch(imgs[i : i + k], ys[i : i + k], caps[i : i + k], tidx[i : i + k]) for i in range(0, local, k)]
    if accum == 1:
        out = step(imgs, ys, caps, tidx, 1.5, False)
        backward(out.loss)
    else:
        no_sync = wrapped.no_sync if env.distributed else None
        out = step.accumulate(micro, 1.5, False, backward=backward, no_sync=no_sync)
    values = torch.stack([out.loss.detach(), out.contrastive, out.reg])
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= env.world_size
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    return values, grads


def _ddp_worker(rank: int, world: int, port: int, out: str, accum: int, freeze_text: bool) -> None:
    import os

    import torch.distributed as dist

    from starft_cli.train.distributed import DistEnv

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values, grads = _ddp_loss_and_grads(DistEnv(rank=rank, world_size=world, local_rank=rank), accum, freeze_text)
        if rank == 0:
            torch.save({"values": values, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("accum", "freeze_text"), [(1, False), (2, False), (1, True)])
def test_two_gloo_processes_match_one_process(tmp_path, accum: int, freeze_text: bool) -> None:
    """The self-distillation softmax runs over the global batch: two processes (x ``accum`` micro-batches) give
    one process's loss and gradients on the whole batch."""
    import socket

    import torch.multiprocessing as mp

    from starft_cli.train.distributed import DistEnv

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(2, port, out, accum, freeze_text), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    values, grads = _ddp_loss_and_grads(DistEnv(), 1, freeze_text)
    torch.testing.assert_close(two["values"], values, atol=1e-5, rtol=1e-5)
    assert values[2] > 1e-3  # the self-distillation term contributes
    assert two["grads"].keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(two["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def _tower(**parts: torch.nn.Module) -> torch.nn.Module:
    tower = torch.nn.Module()
    for name, part in parts.items():
        setattr(tower, name, part)
    return tower


def test_projection_of_every_open_clip_tower_layout() -> None:
    """ViT (a parameter), modified ResNet (the attention pool's output layer) and timm (the head's projection, as
    in the starft-demo architecture): each as a (width, embed_dim) view of the trained parameter."""
    vit = _tower(visual=_tower())
    vit.visual.proj = torch.nn.Parameter(torch.randn(6, 4))
    assert carot.visual_projection(vit) is vit.visual.proj
    resnet = _tower(visual=_tower(attnpool=_tower(c_proj=torch.nn.Linear(6, 4))))
    got = carot.visual_projection(resnet)
    assert got.shape == (6, 4) and torch.equal(got, resnet.visual.attnpool.c_proj.weight.T)
    timm = _tower(visual=_tower(head=_tower(proj=torch.nn.Linear(6, 4, bias=False))))
    got = carot.visual_projection(timm)
    assert got.shape == (6, 4) and torch.equal(got, timm.visual.head.proj.weight.T)
    carot.orthogonality_penalty(got).backward()
    assert timm.visual.head.proj.weight.grad is not None  # the penalty reaches the parameter through the view
    text = _tower()
    text.text_projection = torch.nn.Linear(5, 4, bias=False)
    assert torch.equal(carot.text_projection(text), text.text_projection.weight.T)
    with pytest.raises(UsageError, match="caption tower"):
        carot.text_projection(_tower())
