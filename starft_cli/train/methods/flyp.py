"""FLYP: fine-tune like you pre-train."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from starft_cli.train.methods import register
from starft_cli.train.methods.base import HParam, Method, RunContext

if TYPE_CHECKING:
    import torch

#: ``fixed``: every sample's caption is its class caption from ``--caption-template`` (the StarFT paper's FLYP
#: baseline, whose training CSV holds "a photo of a {class}."); ``templates``: a caption drawn afresh for each
#: sample and step from the run's zero-shot templates (FLYP's own recipe).
CAPTION_RECIPES = ("fixed", "templates")


def template_choice(seed: int, step: int, index: int, count: int) -> int:
    """Which of ``count`` templates sample ``index`` (its dataset index) is captioned with at optimizer ``step``:
    uniform, a function of (seed, step, index) only (so the same after a resume and for any process count)."""
    digest = hashlib.sha256(f"flyp-caption/{int(seed)}/{int(step)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


@register
class FLYP(Method):
    """FLYP (Goyal et al., "Finetune like you pretrain: Improved finetuning of zero-shot vision models", CVPR
    2023): CLIP's symmetric contrastive loss between each image and a caption of its class, both towers trained;
    the batch's other captions are the negatives.

    captions=fixed (default) is the StarFT paper's FLYP baseline: one caption per class ("a photo of a {class}.",
    --caption-template). captions=templates is FLYP's own recipe: each sample's caption is one of the run's
    zero-shot templates (e.g. the 80 ImageNet ones) filled with its class name, drawn afresh for every sample and
    step (a function of seed, step and sample, so a resume is exact). Data with its own captions (csv: with a
    caption column) keeps them under captions=fixed."""

    name = "flyp"
    title = "contrastive fine-tuning with class captions (CLIP's pre-training loss)"
    source = "Goyal et al., Finetune like you pretrain: Improved finetuning of zero-shot vision models, CVPR 2023"
    loss_doc = (
        "L = (CE(s * I C^T, diag) + CE(s * C I^T, diag)) / 2 over the batch's images I and captions C, "
        "s = exp(logit_scale)"
    )
    objective = "contrastive"
    hparams = (
        HParam(
            "captions",
            "fixed",
            "fixed: each class's one caption (the StarFT paper's FLYP); templates: a zero-shot template drawn per "
            "sample and step (FLYP's own)",
            kind=str,
            choices=CAPTION_RECIPES,
        ),
    )

    @property
    def own_captions(self) -> bool:  # type: ignore[override]
        return self.hp["captions"] == "templates"

    def captions(self, ctx: RunContext, step: int, index: torch.Tensor, labels: torch.Tensor) -> list[str] | None:
        """With captions=templates: sample i's caption is template ``template_choice(seed, step, i)`` filled with
        its class name; otherwise None (the data's own)."""
        if not self.own_captions:
            return None
        from starft_cli.prompts import fill

        templates, names = ctx.templates, ctx.classnames
        return [
            fill(templates[template_choice(ctx.seed, step, i, len(templates))], names[y])
            for i, y in zip(index.tolist(), labels.tolist(), strict=True)
        ]
