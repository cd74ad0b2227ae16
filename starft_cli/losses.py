"""Training losses: the FLYP contrastive loss (open_clip's ClipLoss), the StarFT regulariser and its KL variant.

Everything here works on features that are already L2-normalised. See METHOD.md for the definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The value masked logits are set to (as the reference does); only representable in float32 or wider.
MASK_VALUE = -1e8


def star_regularizer_rows(
    teacher_image: torch.Tensor,
    teacher_spurious_text: torch.Tensor,
    student_image: torch.Tensor,
    student_spurious_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    labels: torch.Tensor,
    masked: bool = True,
    *,
    column_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """StarReg per row: ``KL(softmax(T_i) || softmax(S_i))`` for each row ``i``, shape ``[n_rows]`` (float32, nats).

    ``T = scale * teacher_image @ teacher_spurious_text.T`` and ``S = scale * student_image @
    student_spurious_text.T`` (images ``[n_rows, d]``, texts ``[n_cols, d]``, the teacher's and the student's
    dimensions may differ) with the teacher's fixed ``scale``. With ``masked`` every pair of samples that share a
    label (``labels [n_rows]`` against ``column_labels [n_cols]``, default ``labels``; the diagonal included) is
    masked out of both distributions; a row with nothing left is exactly zero. ``masked=False`` is the plain KL
    ablation. Computed in float32 whatever the input dtype. This is the one formula of the regulariser:
    :func:`star_regularizer` (training) and :mod:`starft_cli.probe` (held-out drift) aggregate these rows.
    """
    import torch
    import torch.nn.functional as F

    if column_labels is None:
        column_labels = labels
    n_rows = teacher_image.shape[0]
    scale = torch.as_tensor(teacher_scale, dtype=torch.float32, device=student_image.device).detach()
    with torch.autocast(device_type=student_image.device.type, enabled=False):
        t_logits = scale * (teacher_image.float() @ teacher_spurious_text.float().T)
        s_logits = scale * (student_image.float() @ student_spurious_text.float().T)
        if masked:
            same = labels.view(-1, 1) == column_labels.view(1, -1)
            t_logits = t_logits.masked_fill(same, MASK_VALUE)
            s_logits = s_logits.masked_fill(same, MASK_VALUE)
            valid_rows = ~same.all(dim=1)
        else:
            valid_rows = torch.ones(n_rows, dtype=torch.bool, device=student_image.device)
        log_q = F.log_softmax(s_logits, dim=1)
        log_p = F.log_softmax(t_logits.detach(), dim=1)
        # p * (log p - log q) with p = exp(log p): masked entries (p == 0) add exactly 0, and identical teacher and
        # student logits give exactly 0 (not float noise of either sign).
        per_row = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
        return torch.where(valid_rows, per_row, torch.zeros_like(per_row))


def star_regularizer(
    teacher_image: torch.Tensor,
    teacher_spurious_text: torch.Tensor,
    student_image: torch.Tensor,
    student_spurious_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    labels: torch.Tensor,
    masked: bool = True,
    *,
    column_labels: torch.Tensor | None = None,
    normalizer: int | None = None,
) -> torch.Tensor:
    """StarReg: :func:`star_regularizer_rows` averaged over the batch (``batchmean``), a scalar.

    A row with every entry masked contributes zero (and still counts in the mean). For a global batch split over
    processes, pass this process's rows (``*_image``, ``labels``), the gathered columns (``*_spurious_text`` and
    their ``column_labels``) and ``normalizer`` = the global batch size.
    """
    per_row = star_regularizer_rows(
        teacher_image,
        teacher_spurious_text,
        student_image,
        student_spurious_text,
        teacher_scale,
        labels,
        masked,
        column_labels=column_labels,
    )
    normalizer = teacher_image.shape[0] if normalizer is None else normalizer
    return per_row.sum() / max(int(normalizer), 1)


def kl_regularizer(
    teacher_image: torch.Tensor,
    teacher_spurious_text: torch.Tensor,
    student_image: torch.Tensor,
    student_spurious_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    labels: torch.Tensor,
    **kwargs: object,
) -> torch.Tensor:
    """The unmasked KL ablation ("kl"): :func:`star_regularizer` with ``masked=False``."""
    return star_regularizer(
        teacher_image,
        teacher_spurious_text,
        student_image,
        student_spurious_text,
        teacher_scale,
        labels,
        masked=False,
        **kwargs,  # type: ignore[arg-type]
    )


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """FLYP's symmetric InfoNCE with diagonal targets, via open_clip's ClipLoss.

    Across processes the features are gathered with gradients and each process computes the loss of its
    own rows, so the averaged gradients equal one process's on the whole batch.
    """
    import warnings

    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1, rank=rank, world_size=world_size)
    with warnings.catch_warnings():  # torch marks the autograd all_gather ClipLoss uses as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return loss(image_features, text_features, logit_scale)
