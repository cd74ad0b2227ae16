"""The unmasked-KL ablation of StarFT."""

from __future__ import annotations

from starft_cli.train.methods import register
from starft_cli.train.methods.starft import StarFT


@register
class KLAblation(StarFT):
    """StarReg without the class mask (the paper's ablation of the mask): the KL divergence between the teacher's and
    the student's softmax over every spurious text of the batch, the sample's own class included."""

    name = "kl"
    title = "FLYP + unmasked KL on spurious texts (StarFT's ablation)"
    source = "Kim et al., StarFT: Robust Fine-tuning of Zero-shot Models via Spuriosity Alignment, IJCAI 2025, ablation"
    loss_doc = (
        "L = CLIP contrastive loss(image, caption) + lambda * mean_i KL(softmax_j(T_ij) || softmax_j(S_ij)) over "
        "all of the batch's spurious texts j (no mask)"
    )
    masked = False
