"""FLYP: fine-tune like you pre-train."""

from __future__ import annotations

from starft_cli.train.methods import register
from starft_cli.train.methods.base import Method


@register
class FLYP(Method):
    """FLYP (Goyal et al., "Finetune like you pretrain: Improved finetuning of zero-shot vision models", CVPR
    2023): CLIP's symmetric contrastive loss between each image and its class caption ("a photo of a {class}."),
    both towers trained; the batch's other captions are the negatives."""

    name = "flyp"
    title = "contrastive fine-tuning with class captions (CLIP's pre-training loss)"
    source = "Goyal et al., Finetune like you pretrain: Improved finetuning of zero-shot vision models, CVPR 2023"
    loss_doc = (
        "L = (CE(s * I C^T, diag) + CE(s * C I^T, diag)) / 2 over the batch's images I and captions C, "
        "s = exp(logit_scale)"
    )
    objective = "contrastive"
