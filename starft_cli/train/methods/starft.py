"""StarFT: FLYP plus the spurious textual alignment regulariser (StarReg)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starft_cli.train.methods import register
from starft_cli.train.methods.base import Method, RunContext

if TYPE_CHECKING:
    import torch

    from starft_cli.train.methods.base import Features


@register
class StarFT(Method):
    """StarFT (Kim, Jeong, Kwak, Lee, Lee & Shin, "StarFT: Robust Fine-tuning of Zero-shot Models via Spuriosity
    Alignment", IJCAI 2025): FLYP's contrastive loss plus ``lambda x`` StarReg, the KL divergence
    between the zero-shot (teacher) and fine-tuned (student) models' softmax over the batch's spurious texts, with
    every column of the sample's own class masked out (the paper's StarReg). Defaults: lambda 0.5 on the linear
    per-epoch schedule, the ``background`` pool."""

    name = "starft"
    title = "FLYP + StarReg: keep the zero-shot model's view of LM-written spurious descriptions"
    source = (
        "Kim, Jeong, Kwak, Lee, Lee & Shin, StarFT: Robust Fine-tuning of Zero-shot Models via Spuriosity Alignment, "
        "IJCAI 2025"
    )
    loss_doc = (
        "L = CLIP contrastive loss(image, caption) + lambda * mean_i KL(softmax_j(T_ij) || softmax_j(S_ij)) where "
        "T_ij / S_ij = teacher scale x <teacher / student image i, teacher / student spurious text j> over the "
        "batch's spurious texts, columns of i's own class masked out"
    )
    objective = "contrastive"
    needs_teacher = True
    needs_pool = True
    regularized = True
    default_lambda = 0.5
    masked = True

    def setup(self, ctx: RunContext) -> None:
        assert ctx.teacher is not None
        self.teacher_scale = float(ctx.teacher.logit_scale.exp().item())

    def regularizer(self, features: Features, labels: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """StarReg of this process's rows against the gathered batch columns (the paper's StarReg)."""
        from starft_cli.losses import star_regularizer
        from starft_cli.train.distributed import gather_no_grad, gather_with_grad

        f, env = features, ctx.env
        assert f.s_sp is not None and f.t_sp is not None and f.t_img is not None
        columns = gather_with_grad(f.s_sp, env) if f.s_sp.requires_grad else gather_no_grad(f.s_sp, env)
        return star_regularizer(
            f.t_img,
            gather_no_grad(f.t_sp, env),
            f.img,
            columns,
            self.teacher_scale,
            labels,
            masked=self.masked,
            column_labels=gather_no_grad(labels, env),
            normalizer=labels.shape[0],  # this process's share: the mean over processes is the global mean
        )
