"""Cross-entropy fine-tuning from the zero-shot head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starft_cli.train.methods import register
from starft_cli.train.methods.base import ClassifierBatch, LossParts, Method, RunContext

if TYPE_CHECKING:
    import torch


def cross_entropy(batch: ClassifierBatch) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``batch.logits`` (n, C) against ``batch.labels`` (n,)."""
    import torch.nn.functional as F

    return F.cross_entropy(batch.logits.float(), batch.labels)


@register
class FT(Method):
    """Standard fine-tuning (the baseline of Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022):
    cross-entropy on a linear head initialised with the zero-shot head (class text features of the templates,
    times the logit scale), the image tower and the head trained, the text tower unused."""

    name = "ft"
    title = "cross-entropy fine-tuning of the image tower and a zero-shot-initialised head"
    source = "Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022 (the standard fine-tuning baseline)"
    loss_doc = "L = CE(W f(x), y), W initialised to exp(logit_scale) x the zero-shot head's class text features"
    objective = "classifier"

    def classifier_loss(self, batch: ClassifierBatch, lam: float, ctx: RunContext) -> LossParts:
        loss = cross_entropy(batch)
        return LossParts(total=loss, main=loss.detach(), reg=loss.new_zeros(()))
