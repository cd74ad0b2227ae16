"""CaRot: calibrated robust fine-tuning (Oh et al., NeurIPS 2024).

Oh, Lim, Kim, Han, Yun, Choo, Hauptmann, Cheng, Song, "Towards Calibrated Robust Fine-Tuning of Vision-Language
Models", NeurIPS 2024 (arXiv:2311.01723); the authors' code is github.com/MLAI-Yonsei/CaRot
(``src/models/carot_loss.py``, defaults in ``src/args.py`` and the README's reproduction command).

The objective is FLYP's caption contrastive loss plus two terms (paper Sec. 4):

* **orthogonality constraint (OC)** on the image tower's final projection ``W`` (open_clip's ``visual.proj``,
  shape ``(width, embed_dim)``): ``lambda_oc * ||W^T W - I||_F``, the plain Frobenius norm of the Gram
  matrix's distance to the identity (the authors' code takes the square root; it is not squared). It pushes
  the projection's singular values towards 1, so the smallest singular value of the image representation
  stays large (the paper's bound on OOD error and OOD calibration error);
* **self-distillation (SD)** from an exponential-moving-average (EMA) copy of the model: the EMA teacher's
  in-batch image-to-caption and caption-to-image softmax distributions (with the teacher's own logit scale)
  are soft targets for the student's (with the student's logit scale): for each row, the cross-entropy of
  the student's distribution against the teacher's, both directions summed, averaged over the batch rows,
  weighted by ``lambda_sd``.

The EMA teacher starts as a copy of the model being fine-tuned (the zero-shot weights); after optimizer step
``t`` (counted from 0) it is updated when ``t % ema_every == 0``: ``teacher <- m_t * teacher + (1 - m_t) *
student`` for every parameter, with the momentum ``m_t`` rising linearly from ``momentum_start`` to
``momentum_end`` over the first ``momentum_warmup`` fraction of the training steps, then constant.

The functions below are the method's formulas on plain tensors; :class:`CaRot` (``--method carot``) wires them
into the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from starft_cli.errors import UsageError
from starft_cli.train.methods import register
from starft_cli.train.methods.base import HParam, Method, RunContext

if TYPE_CHECKING:
    from starft_cli.train.methods.base import Features

#: The paper's / authors' defaults (README reproduction command and ``src/args.py``).
DEFAULT_LAMBDA_SD = 1.5  # --distil_coef in the README's command
DEFAULT_LAMBDA_OC = 0.2  # --l_orth_wv in the README's command
DEFAULT_EMA_EVERY = 500  # --ema_up_freq: optimizer steps between EMA updates
DEFAULT_MOMENTUM_START = 0.05  # --m_sche_src
DEFAULT_MOMENTUM_END = 0.9  # --m_sche_tar
DEFAULT_MOMENTUM_WARMUP = 0.2  # --m_warm_up: fraction of the training steps of the linear momentum ramp
DEFAULT_LAMBDA_CROSS = 0.05  # --cross_fnorm in the README's command and example_scripts/carot.sh (args.py: 0)


def orthogonality_penalty(proj: torch.Tensor) -> torch.Tensor:
    """The orthogonality constraint's value ``||W^T W - I||_F`` (a scalar, unitless), not squared, not weighted.

    ``proj`` is the image tower's projection ``W`` of shape ``(width, embed_dim)`` (features are
    ``x @ W``), so ``W^T W`` is ``(embed_dim, embed_dim)`` and the penalty is zero exactly when ``W`` has
    orthonormal columns. Computed in float32 (or the input's wider dtype) outside autocast; the gradient is
    finite (zero) at an exactly orthonormal ``W``. Source: CaRot Sec. 4, the constrained contrastive loss; the
    authors' ``carot_loss.py`` (``l_orth_wv`` term).
    """
    with torch.autocast(device_type=proj.device.type, enabled=False):
        w = proj if proj.dtype == torch.float64 else proj.float()
        gram = w.T @ w
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.matrix_norm(gram - eye, ord="fro")


def cross_modal_penalty(visual_proj: torch.Tensor, text_proj: torch.Tensor) -> torch.Tensor:
    """``||W_v W_t^T||_F`` (a scalar, not squared, not weighted): the cross-modal term of the authors' reproduction
    command (``--cross_fnorm 0.05``; the paper does not describe it; on by default, as the authors run it).

    ``visual_proj`` is the image projection ``W_v`` (width_v, embed_dim), ``text_proj`` the caption projection
    ``W_t`` (width_t, embed_dim) (open_clip's ``text_projection``); the product is (width_v, width_t). Computed in
    float32 (or float64 when given) outside autocast. Source: the authors' ``carot_loss.py`` (``cross_fnorm``).
    """
    with torch.autocast(device_type=visual_proj.device.type, enabled=False):
        dtype = torch.float64 if visual_proj.dtype == torch.float64 else torch.float32
        return torch.linalg.matrix_norm(visual_proj.to(dtype) @ text_proj.to(dtype).T, ord="fro")


def visual_projection(model: Any) -> torch.Tensor:
    """The image tower's final projection of an open_clip model as a ``(width, embed_dim)`` tensor (a view that
    carries the parameter's gradient).

    ViT towers: ``visual.proj``; modified-ResNet towers: the attention pool's output layer (its weight
    transposed); timm towers: the head's linear projection (weight transposed).

    Raises:
        UsageError: the model has no linear projection at the end of its image tower.
    """
    visual = getattr(model, "visual", None)
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return proj
    attnpool = getattr(visual, "attnpool", None)
    c_proj = getattr(attnpool, "c_proj", None)
    if isinstance(c_proj, torch.nn.Linear):
        return c_proj.weight.T
    head_proj = getattr(getattr(visual, "head", None), "proj", None)
    if isinstance(head_proj, torch.nn.Linear):
        return head_proj.weight.T
    raise UsageError(
        "carot needs a linear projection at the end of the image tower and this model has none",
        "Use a CLIP model whose image tower ends in a projection (ViT: visual.proj), or another `method`",
        param="method",
    )


def self_distillation_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    *,
    image_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    teacher_image_columns: torch.Tensor | None = None,
    teacher_text_columns: torch.Tensor | None = None,
    normalizer: int | None = None,
) -> torch.Tensor:
    """CaRot's self-distillation term (a scalar in nats), not weighted.

    Rows: ``image``/``text`` (n, d) are the student's L2-normalised image and caption features of n samples,
    ``teacher_image``/``teacher_text`` (n, d_t) the EMA teacher's of the same samples. Columns (default: the
    rows) are the batch the softmax runs over (for a batch split over processes: the gathered features).
    ``scale``/``teacher_scale`` are each model's ``exp(logit_scale)``.

    For row i, with ``p = softmax(teacher_scale * teacher_image[i] @ teacher_text_columns^T)`` and
    ``q = softmax(scale * image[i] @ text_columns^T)`` (image to caption), and the same with images and captions
    swapped (caption to image), the row's loss is ``-sum_j p_j log q_j`` for both directions, summed. The
    result is the sum over rows divided by ``normalizer`` (default n). The teacher side carries no gradient.
    Computed in float32 (or float64 when given) outside autocast. Source: CaRot Sec. 4 (self-distillation with
    an EMA teacher); the authors' ``carot_loss.py`` (``distil_coef`` term: soft-target cross-entropy over both
    directions, each with its own model's logit scale).
    """
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    image_columns = image if image_columns is None else image_columns
    text_columns = text if text_columns is None else text_columns
    teacher_image_columns = teacher_image if teacher_image_columns is None else teacher_image_columns
    teacher_text_columns = teacher_text if teacher_text_columns is None else teacher_text_columns
    device = image.device
    s = torch.as_tensor(scale, device=device).to(dtype)
    t = torch.as_tensor(teacher_scale, device=device).to(dtype).detach()
    with torch.autocast(device_type=device.type, enabled=False):
        with torch.no_grad():
            p_i2t = F.softmax(t * (teacher_image.to(dtype) @ teacher_text_columns.to(dtype).T), dim=1)
            p_t2i = F.softmax(t * (teacher_text.to(dtype) @ teacher_image_columns.to(dtype).T), dim=1)
        log_q_i2t = F.log_softmax(s * (image.to(dtype) @ text_columns.to(dtype).T), dim=1)
        log_q_t2i = F.log_softmax(s * (text.to(dtype) @ image_columns.to(dtype).T), dim=1)
        total = -(p_i2t * log_q_i2t).sum() - (p_t2i * log_q_t2i).sum()
    n = image.shape[0] if normalizer is None else normalizer
    return total / max(int(n), 1)


def ema_momentum(
    step: int,
    total_steps: int,
    start: float = DEFAULT_MOMENTUM_START,
    end: float = DEFAULT_MOMENTUM_END,
    warmup: float = DEFAULT_MOMENTUM_WARMUP,
) -> float:
    """The EMA momentum ``m`` (weight kept by the teacher, in [0, 1]) used after optimizer step ``step``
    (counted from 0) of ``total_steps``: ``start + (end - start) * step / (warmup * total_steps)`` while
    ``step < warmup * total_steps``, then ``end``. Source: the authors' ``carot_loss.py`` (``m_sche_src``,
    ``m_sche_tar``, ``m_warm_up``); the paper only says the teacher is a moving average of the student."""
    ramp = warmup * total_steps
    if step < ramp:
        return start + (end - start) * step / ramp
    return end


def ema_due(step: int, every: int) -> bool:
    """Whether the EMA teacher is updated after optimizer step ``step`` (counted from 0): every ``every``
    steps starting with step 0; never when ``every`` is 0."""
    return every > 0 and step % every == 0


@torch.no_grad()
def ema_update_(teacher: Iterable[torch.Tensor], student: Iterable[torch.Tensor], momentum: float) -> None:
    """In place, for each pair: ``teacher <- momentum * teacher + (1 - momentum) * student``.

    ``teacher`` and ``student`` are matching sequences of tensors (same shapes, in the same order, e.g. the
    two models' ``parameters()``). Raises ValueError when the two sequences differ in length (a programming
    error, not a user's).
    """
    t_list, s_list = list(teacher), list(student)
    if len(t_list) != len(s_list):
        raise ValueError(f"EMA update: {len(t_list)} teacher tensors but {len(s_list)} student tensors")
    for t, s in zip(t_list, s_list, strict=True):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)


def text_projection(model: Any) -> torch.Tensor:
    """The caption tower's final projection of an open_clip model as a ``(width, embed_dim)`` tensor
    (``text_projection``; an ``nn.Linear`` projection as its weight transposed).

    Raises:
        UsageError: the model has no caption projection.
    """
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj
    if isinstance(proj, torch.nn.Linear):
        return proj.weight.T
    raise UsageError(
        "carot's cross-modal term needs a projection at the end of the caption tower and this model has none",
        "Set the hyper-parameter lambda_cross to 0 (`hparams`: lambda_cross=0)",
        param="hparams",
    )


@register
class CaRot(Method):
    """CaRot (Oh et al., "Towards Calibrated Robust Fine-Tuning of Vision-Language Models", NeurIPS 2024): FLYP's
    caption contrastive loss, plus lambda_oc x ||W^T W - I||_F on the image projection W (a parameter-space term,
    added once per optimizer step), plus lambda x the self-distillation term against an EMA teacher (--lambda
    defaults to 1.5). The authors keep that weight constant over the run, and so does this method by default.

    The EMA teacher is a copy of the model at the start of fine-tuning, updated after optimizer steps 0,
    ema_every, 2 x ema_every, ... with momentum m_t; its weights are part of the checkpoint, so a resumed run is
    the uninterrupted one. As in the authors' code the self-distillation term is not computed at step 0 (the
    teacher is still the student). Defaults: the authors' README command (lambda_oc 0.2, lambda 1.5) and their
    src/args.py (EMA every 500 steps, momentum 0.05 -> 0.9 over the first 20% of the steps). Their command also
    adds 0.05 x ||W_v W_t^T||_F (image projection times caption projection), which the paper does not describe:
    lambda_cross, 0.05 by default as in that command (0 gives the paper's objective; a model without a caption
    projection needs lambda_cross=0).
    """

    name = "carot"
    title = "FLYP + orthogonal image projection + self-distillation from an EMA teacher (calibrated robust FT)"
    source = "Oh et al., Towards Calibrated Robust Fine-Tuning of Vision-Language Models, NeurIPS 2024"
    loss_doc = (
        "L = CLIP contrastive loss(image, caption) + lambda_oc * ||W^T W - I||_F (W: the image projection, "
        "width x embed) + lambda_cross * ||W_v W_t^T||_F (W_t: the caption projection) "
        "+ lambda * mean_i [CE(p_i, q_i) over captions + CE(p'_i, q'_i) over images], p / p' the "
        "EMA teacher's in-batch image-to-caption / caption-to-image softmax (its own logit scale), q / q' the "
        "student's; after step t with t % ema_every == 0: teacher = m_t * teacher + (1 - m_t) * student, m_t "
        "rising linearly from momentum_start to momentum_end over the first momentum_warmup of the steps"
    )
    objective = "contrastive"
    needs_teacher = False  # its teacher is its own EMA model, not the frozen zero-shot one
    regularized = True
    default_lambda = DEFAULT_LAMBDA_SD
    default_lambda_schedule = "constant"  # the authors keep the weight constant
    hparams = (
        HParam("lambda_oc", DEFAULT_LAMBDA_OC, "weight of the orthogonality constraint ||W^T W - I||_F"),
        HParam("ema_every", DEFAULT_EMA_EVERY, "optimizer steps between EMA teacher updates (0: never)", kind=int),
        HParam("momentum_start", DEFAULT_MOMENTUM_START, "EMA momentum at step 0", maximum=1.0),
        HParam("momentum_end", DEFAULT_MOMENTUM_END, "EMA momentum after the ramp", maximum=1.0),
        HParam("momentum_warmup", DEFAULT_MOMENTUM_WARMUP, "fraction of the steps of the momentum ramp", maximum=1.0),
        HParam(
            "lambda_cross",
            DEFAULT_LAMBDA_CROSS,
            "weight of ||W_v W_t^T||_F (the authors' command; not in the paper: 0 for the paper's objective)",
        ),
    )

    def setup(self, ctx: RunContext) -> None:
        """Check the model has an image projection; make the EMA teacher, a frozen eval-mode copy of the student."""
        import copy

        visual_projection(ctx.student)  # fail before training, not at the first penalty
        if self.hp["lambda_cross"]:
            text_projection(ctx.student)
        self.ema = copy.deepcopy(ctx.student).eval().requires_grad_(False)
        self.step = 0

    def begin_step(self, ctx: RunContext, step: int) -> None:
        self.step = step

    def teacher_features(self, ctx: RunContext, images: torch.Tensor, caption_tokens: torch.Tensor) -> dict[str, Any]:
        """The EMA teacher's normalised image and caption features of the micro-batch, (n, d) each (each distinct
        caption encoded once); none at step 0, where the authors skip the term."""
        from starft_cli.train.text import encode_text

        if self.step == 0:
            return {}
        with torch.no_grad():
            # Each distinct caption once (class captions repeat across the batch), as the student's step does.
            unique, inverse = torch.unique(caption_tokens, dim=0, return_inverse=True)
            return {
                "ema_image": self.ema.encode_image(images, normalize=True),
                "ema_caption": encode_text(self.ema, unique, normalize=True)[inverse],
            }

    def regularizer(self, features: Features, labels: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Self-distillation of this process's rows against the gathered batch (the global batch's softmax)."""
        from starft_cli.train.distributed import gather_no_grad, gather_with_grad

        f, env = features, ctx.env
        if "ema_image" not in f.extra:
            return f.img.new_zeros((), dtype=torch.float32)

        def columns(x: torch.Tensor) -> torch.Tensor:
            return gather_with_grad(x, env) if x.requires_grad else gather_no_grad(x, env)

        t_img, t_cap = f.extra["ema_image"], f.extra["ema_caption"]
        return self_distillation_loss(
            f.img,
            f.cap,
            f.scale,
            t_img,
            t_cap,
            self.ema.logit_scale.exp(),
            image_columns=columns(f.img),
            text_columns=columns(f.cap),
            teacher_image_columns=gather_no_grad(t_img, env),
            teacher_text_columns=gather_no_grad(t_cap, env),
            normalizer=labels.shape[0],  # this process's share: the mean over processes is the global mean
        )

    def weight_penalty(self, ctx: RunContext) -> torch.Tensor | None:
        """``lambda_oc x ||W^T W - I||_F`` (+ ``lambda_cross x ||W_v W_t^T||_F``), float32; None when both are 0."""
        total = None
        if self.hp["lambda_oc"]:
            total = float(self.hp["lambda_oc"]) * orthogonality_penalty(visual_projection(ctx.student))
        if self.hp["lambda_cross"]:
            cross = float(self.hp["lambda_cross"]) * cross_modal_penalty(
                visual_projection(ctx.student), text_projection(ctx.student)
            )
            total = cross if total is None else total + cross
        return total

    def end_step(self, ctx: RunContext, step: int) -> None:
        """The EMA update after optimizer step ``step`` (0-based), when due."""
        if ema_due(step, int(self.hp["ema_every"])):
            m = ema_momentum(
                step,
                ctx.total_steps,
                float(self.hp["momentum_start"]),
                float(self.hp["momentum_end"]),
                float(self.hp["momentum_warmup"]),
            )
            ema_update_(self.ema.parameters(), ctx.student.parameters(), m)

    def state_dict(self) -> dict[str, Any]:
        """The EMA teacher's parameters, ``ema.<name>``."""
        return {f"ema.{n}": p.detach() for n, p in self.ema.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the EMA teacher from :meth:`state_dict`.

        Raises:
            CheckpointError: the checkpoint's EMA parameters are not this model's (names or shapes).
        """
        from starft_cli.errors import CheckpointError

        params = dict(self.ema.named_parameters())
        want = {f"ema.{n}" for n in params}
        if set(state) != want or any(tuple(state[f"ema.{n}"].shape) != tuple(p.shape) for n, p in params.items()):
            raise CheckpointError(
                "the checkpoint's carot EMA teacher does not match the model",
                "Resume with the run's own checkpoint and model, or start a new run",
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[f"ema.{n}"])
