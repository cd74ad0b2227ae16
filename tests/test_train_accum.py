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
