"""--grad-accum is exact: the first step's loss and gradients equal the unaccumulated step's (issue 9, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods import make_method
from starft_cli.train.step import MicroBatch, StarStep, Towers, template_indices
from tests.test_train_step import CLASSES, _setup

METHOD_OF = {"star": "starft", "kl": "kl", "none": "flyp"}
runner = CliRunner()


def _assert_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Equal to float32 summation-order noise: within 1e-5 of the tensor's largest gradient."""
    error = float((got - want).abs().max())
    assert error <= 1e-5 * float(want.abs().max()) + 1e-8, f"{name}: max error {error:.3g}"


def _first_step(tmp_path: Path, data: Path, accum: int, *extra: str) -> tuple[float, dict[str, torch.Tensor]]:
    """Run one optimizer step of `starft finetune`; return the logged loss and the gradients it stepped with."""
    from starft_cli.train import loop

    grads: dict[str, torch.Tensor] = {}
    original = loop._Trainer._nonfinite

    def spy(self, loss):  # called after the last backward, before the optimizer step
        grads.update({n: p.grad.detach().clone() for n, p in self.towers.named_parameters() if p.grad is not None})
        return original(self, loss)

    run = tmp_path / f"run-{accum}"
    args = ["finetune", "--backbone", "starft-tiny:none", "--workers", "0", "--device", "cpu", "--lr", "1e-4"]
    args += ["--data", f"folder:{data}", "--batch-size", "8", "--max-steps", "1", "--epochs", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop._Trainer, "_nonfinite", spy)
        result = runner.invoke(app, [*args, "--grad-accum", str(accum), "--out", str(run), *extra])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return record["loss"], grads


@pytest.mark.parametrize(
    "extra",
    [
        ("--method", "starft"),
        ("--method", "flyp"),
        ("--method", "kl"),
        ("--method", "starft", "--freeze-text"),
        ("--method", "ft"),
    ],
    ids=["starft", "flyp", "kl", "starft-frozen-text", "ce"],
)
def test_grad_accum_gives_the_unaccumulated_loss_and_gradients(tmp_path: Path, class_folders: Path, extra):
    loss1, grads1 = _first_step(tmp_path, class_folders, 1, *extra)
    for accum in (2, 4):
        loss, grads = _first_step(tmp_path, class_folders, accum, *extra)
        assert loss == pytest.approx(loss1, rel=1e-5, abs=1e-6)
        assert set(grads) == set(grads1) and grads1
        for name, grad in grads1.items():
            _assert_close(grads[name], grad, name)


@pytest.mark.parametrize("impl", ["efficient", "straightforward"])
@pytest.mark.parametrize(("reg", "custom_captions"), [("star", False), ("kl", True), ("none", False)])
def test_accumulate_equals_the_one_batch_step(impl: str, reg: str, custom_captions: bool):
    """StarStep.accumulate over 2 and 4 micro-batches against one call on the whole batch (logit_scale included)."""
    from starft_cli.train.bank import class_captions

    labels = [0, 1, 2, 3, 0, 1, 2, 2]
    n = len(labels)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor(labels)
    caps = [f"a photo of number {i}." for i in range(n)] if custom_captions else None
    caps = caps or [class_captions(CLASSES, "a photo of a {}.")[i] for i in labels]
    results = []
    for parts in (1, 2, 4):
        loaded, student, teacher, pool, bank = _setup(False)
        step = StarStep(
            towers=Towers(student, trim=impl == "efficient"),
            clip=student,
            teacher=teacher,
            tokenizer=loaded.tokenizer,
            pool=pool,
            method=make_method(METHOD_OF[reg]),
            impl=impl,
            bank=bank,
        )
        tidx = template_indices(0, 3, 0, n, len(pool), DistEnv())
        if parts == 1:
            out = step(images, y, caps, tidx, 0.5, not custom_captions)
            out.loss.backward()
        else:
            k = n // parts
            micro = [
                MicroBatch(images[i : i + k], y[i : i + k], caps[i : i + k], tidx[i : i + k]) for i in range(0, n, k)
            ]
            out = step.accumulate(micro, 0.5, not custom_captions, backward=lambda loss: loss.backward())
        grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (ref, ref_grads), *others = results
    assert "logit_scale" in ref_grads
    for out, grads in others:
        assert float(out.loss) == pytest.approx(float(ref.loss.detach()), rel=1e-6)
        assert float(out.reg) == pytest.approx(float(ref.reg), rel=1e-5, abs=1e-7)
        for name, grad in ref_grads.items():
            _assert_close(grads[name], grad, name)


def test_template_draws_do_not_depend_on_grad_accum():
    """The loop draws one step's templates for the whole batch and slices them per micro-batch."""
    whole = template_indices(7, 3, 0, 16, 50, DistEnv())
    for world in (1, 2):
        for rank in range(world):
            local = template_indices(7, 3, 0, 16, 50, DistEnv(rank=rank, world_size=world))
            assert torch.equal(local, whole[rank * 16 // world : (rank + 1) * 16 // world])


def test_both_passes_of_a_micro_batch_draw_the_same_dropout():
    """Issue 19 item 2's kind (a tower run twice over the same samples in train mode): with dropout, the pass with
    gradients replays the cached pass's masks, so every pass back-propagates the loss of one and the same batch."""
    labels = [0, 1, 2, 3, 0, 1, 2, 2]
    n = len(labels)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    loaded, student, teacher, pool, bank = _setup(False)
    dropouts = [m for m in student.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert dropouts
    for m in dropouts:
        m.dropout = 0.5
    step = StarStep(
        towers=Towers(student, trim=True), clip=student, teacher=teacher, tokenizer=loaded.tokenizer, pool=pool,
        method=make_method("starft"), bank=bank,
    )  # fmt: skip
    from starft_cli.train.bank import class_captions

    caps = [class_captions(CLASSES, "a photo of a {}.")[i] for i in labels]
    tidx = template_indices(0, 3, 0, n, len(pool), DistEnv())
    y = torch.tensor(labels)
    micro = [MicroBatch(images[i : i + 2], y[i : i + 2], caps[i : i + 2], tidx[i : i + 2]) for i in range(0, n, 2)]
    torch.manual_seed(11)
    losses: list[float] = []
    step.accumulate(micro, 0.5, True, backward=lambda loss: (losses.append(float(loss.detach())), loss.backward()))
    assert len(losses) == 4
    assert max(losses) - min(losses) <= 1e-6 * abs(losses[0])  # without the replay: 3.73 to 4.94
    with torch.no_grad():  # and the masks are random: another seed gives another loss
        torch.manual_seed(12)
        other = step.accumulate(micro, 0.5, True, backward=lambda loss: None)
    assert abs(float(other.loss) - losses[0]) > 1e-4


def test_grad_accum_is_refused_where_batchnorm_normalises_micro_batches(tmp_path: Path, class_folders: Path):
    """Issue 19 item 2: on starft-demo:none (a timm ResNet tower) a micro-batch is normalised by its own statistics,
    so accumulation cannot equal the whole batch's step: refused in one line, before any run is written. A linear
    probe (the tower frozen, in eval mode) accumulates exactly and is allowed."""
    from safetensors.torch import load_file

    args = ["finetune", "--backbone", "starft-demo:none", "--workers", "0", "--device", "cpu", "--warmup", "1"]
    args += ["--data", f"folder:{class_folders}", "--batch-size", "8", "--epochs", "1", "--max-steps", "1"]
    result = runner.invoke(app, [*args, "--method", "flyp", "--grad-accum", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: --grad-accum 2 would not be exact with starft-demo:none: it has 15 BatchNorm layer(s) in training "
        "mode (e.g. visual.trunk.conv1.1), which normalise each micro-batch with its own statistics. Drop "
        "--grad-accum (lower --batch-size, or save memory with --grad-checkpointing)"
    )
    assert not (tmp_path / "a" / "config.json").exists()
    for method in ("ft", "lp-ft"):  # an image tower that trains in some stage
        assert runner.invoke(app, [*args, "--method", method, "--grad-accum", "4"]).exit_code == 2
    probe = runner.invoke(app, [*args, "--method", "lp", "--grad-accum", "2", "--out", str(tmp_path / "lp")])
    assert probe.exit_code == 0, probe.output
    weights = load_file(str(tmp_path / "lp" / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert int(weights["visual.trunk.bn1.num_batches_tracked"]) == 0  # eval mode: running statistics untouched
    flyp = runner.invoke(app, [*args, "--method", "flyp", "--out", str(tmp_path / "flyp")])
    assert flyp.exit_code == 0, flyp.output
    weights = load_file(str(tmp_path / "flyp" / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert int(weights["visual.trunk.bn1.num_batches_tracked"]) == 1  # one update per step
