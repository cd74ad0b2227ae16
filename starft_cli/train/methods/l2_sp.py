"""L2-SP: cross-entropy fine-tuning pulled towards the pre-trained weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starft_cli.train.methods import register
from starft_cli.train.methods.base import HParam, RunContext
from starft_cli.train.methods.ft import FT

if TYPE_CHECKING:
    import torch


def l2_sp_penalty(
    params: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    head: torch.Tensor | None,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """L2-SP's regulariser (Li et al., ICML 2018, Eq. 3): ``alpha / 2 * sum ||w - w0||^2`` over the pre-trained
    parameters ``params`` (name -> tensor) against their starting values ``start``, plus ``beta / 2 * ||v||^2`` over
    the new layer ``head`` (C, d). Float32 sum, a scalar."""
    import torch

    total = torch.zeros((), dtype=torch.float32, device=next(iter(params.values())).device)
    for name, value in params.items():
        total = total + (value.float() - start[name].float()).pow(2).sum()
    total = 0.5 * alpha * total
    if head is not None and beta:
        total = total + 0.5 * beta * head.float().pow(2).sum()
    return total


@register
class L2SP(FT):
    """L2-SP (Li et al., "Explicit Inductive Bias for Transfer Learning with Convolutional Networks", ICML 2018):
    cross-entropy plus an L2 pull of the fine-tuned backbone towards its pre-trained (zero-shot) weights, and a
    plain L2 penalty on the new classification layer. Here the "new layer" is the zero-shot-initialised head,
    which is not new, so its weight ``beta`` defaults to 0. ``alpha`` defaults to 0.1; the paper selects both
    weights per task by cross-validation, so tune ``alpha`` per dataset (``--hp alpha=...``).

    The penalty is a sum over parameters, not a mean over samples: it is added once per optimizer step, not per
    micro-batch. AdamW's decoupled weight decay still applies; set ``--wd 0`` for the paper's pure L2-SP."""

    name = "l2-sp"
    title = "cross-entropy plus an L2 pull of the image tower towards its pre-trained weights"
    source = "Li et al., Explicit Inductive Bias for Transfer Learning with Convolutional Networks, ICML 2018"
    loss_doc = "L = CE(W f(x), y) + alpha/2 * ||w - w0||^2 (image tower w, pre-trained w0) + beta/2 * ||W||^2 (head)"
    hparams = (
        HParam("alpha", 0.1, "weight of the pull towards the pre-trained image tower"),
        HParam("beta", 0.0, "weight of the L2 penalty on the head"),
    )

    def setup(self, ctx: RunContext) -> None:
        params = dict(ctx.student.named_parameters())
        self.start = {n: p.detach().clone() for n, p in params.items() if self.trainable(n, "main")}
        self.params: dict[str, Any] = {n: params[n] for n in self.start}

    def weight_penalty(self, ctx: RunContext) -> torch.Tensor:
        head = ctx.head.weight if ctx.head is not None else None
        return l2_sp_penalty(self.params, self.start, head, float(self.hp["alpha"]), float(self.hp["beta"]))
