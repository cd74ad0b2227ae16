"""CAR-FT: context-aware robust fine-tuning (Mao, Chen, Jia, Zhang, Xue, Li; arXiv 2211.16175, 2022; IJCV 2024).

Source: X. Mao et al., "Context-Aware Robust Fine-Tuning" (Section 3, the context distribution and its KL
regulariser). The authors' code is not public; the context weights are formed as in the Lipsum-FT authors'
re-implementation of the baseline (github.com/cs-giung/lipsum-ft, ``scripts/setup.py``, ``zeroshot_ctx_weights``).
Restated here in our own words.

The idea: a zero-shot template such as "a sketch of a {}." describes a *context* (style, background, viewpoint)
rather than a class. CLIP's image features know which context an image is in; plain fine-tuning forgets it.
CAR-FT keeps the fine-tuned model's distribution over contexts equal to the zero-shot model's:

* Context prompt weights (once per run): for every template k of the K zero-shot templates, encode the template
  filled with every class name by the frozen pre-trained text tower, L2-normalise, average over the classes and
  renormalise: ``w_k``, shape ``(K, d)``.
* Context distribution of an image: ``p(k | x) = softmax_k(tau0 * <F(x), w_k>)`` with tau0 the pre-trained
  ``exp(logit_scale)`` (the zero-shot classifier's temperature).
* Regulariser: ``KL(p_zero-shot(. | x) || p_fine-tuned(. | x))``, the zero-shot model's distribution as the
  target, averaged over the batch.
* Loss: cross-entropy through the zero-shot-initialised head + lambda * KL, lambda = 1.0.

Decisions where the sources we could read leave it open: the inverse temperature is the pre-trained logit scale
(without it, cosine similarities of ~0.2 would make every context distribution almost uniform); lambda = 1.0,
constant; the contexts are the run's zero-shot templates (80 for ImageNet), and fewer than two are refused (one
context makes the KL identically 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starft_cli.errors import ConfigError
from starft_cli.train.methods import register
from starft_cli.train.methods.base import ClassifierBatch, HParam, LossParts, RunContext
from starft_cli.train.methods.ft import FT, cross_entropy

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The regulariser's default weight (the paper's beta).
DEFAULT_LAMBDA = 1.0


def context_prompt_weights(features: torch.Tensor) -> torch.Tensor:
    """Context prompt weights ``(K, d)`` from the text features of every (class, template) pair; float32 (float64
    for float64 input).

    ``features``: ``(C, K, d)``, the frozen text tower's features of template k filled with class c (normalised
    here, so raw features are fine). Each template's weight is the class-average of its normalised features,
    renormalised to unit length.
    """
    import torch
    import torch.nn.functional as F

    feats = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
    return F.normalize(feats.mean(dim=0), dim=-1)


def context_log_probs(image: torch.Tensor, contexts: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Log of the context distribution ``log softmax_k(scale * <image_i, w_k>)``, shape ``(n, K)``, float32
    (float64 for float64 inputs).

    ``image``: ``(n, d)`` normalised image features; ``contexts``: ``(K, d)`` context prompt weights;
    ``scale``: the pre-trained ``exp(logit_scale)``.
    """
    import torch

    dtype = torch.promote_types(torch.promote_types(image.dtype, contexts.dtype), torch.float32)
    return torch.log_softmax(float(scale) * (image.to(dtype) @ contexts.to(dtype).t()), dim=-1)


def car_ft_regularizer(
    image: torch.Tensor, teacher_image: torch.Tensor, contexts: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """The CAR-FT regulariser, a scalar (nats; float32, float64 for float64 inputs): the per-image mean of
    ``sum_k p0_k * (log p0_k - log p_k)`` with ``p0 = softmax(scale * contexts @ f0(x))`` (zero-shot, the target)
    and ``p = softmax(scale * contexts @ f(x))`` (fine-tuned).

    ``image``: ``(n, d)`` normalised fine-tuned image features (with grad); ``teacher_image``: ``(n, d)``
    normalised zero-shot image features (no grad); ``contexts``: ``(K, d)`` context prompt weights
    (``context_prompt_weights``); ``scale``: the pre-trained ``exp(logit_scale)``. Computed in float32 whatever the
    autocast dtype.
    """
    import torch
    import torch.nn.functional as F

    with torch.autocast(device_type=image.device.type, enabled=False):
        log_p = context_log_probs(image, contexts, scale)
        log_p0 = context_log_probs(teacher_image, contexts, scale)
        return F.kl_div(log_p, log_p0, log_target=True, reduction="batchmean")


def context_templates(choice: str, run_templates: Sequence[str]) -> list[str]:
    """The context prompts: the run's zero-shot templates (``choice == "zero-shot"``), or a shipped template set
    by name / a file of templates (``starft_cli.prompts.load_templates``).

    Raises ``ConfigError`` when fewer than two remain (a distribution over one context is always 1: the KL would be
    0 whatever the model does) and ``TemplateError`` for an unknown set.
    """
    from starft_cli.prompts import load_templates

    templates = list(run_templates) if choice == "zero-shot" else load_templates(choice)
    if len(templates) < 2:
        where = "the run's zero-shot templates" if choice == "zero-shot" else f"'{choice}'"
        raise ConfigError(
            f"car-ft needs at least two context prompts and {where} has {len(templates)}",
            "Pass a larger template set as the hyper-parameter contexts (`hparams`), e.g. contexts=imagenet80",
            param="hparams",
        )
    return templates


def encode_context_weights(
    model: Any, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], device: Any
) -> torch.Tensor:
    """Context prompt weights ``(K, d)`` float32 of ``templates`` through ``model``'s (frozen) text tower: one
    template at a time, every class name filled in (``context_prompt_weights`` on ``(C, 1, d)`` slices), so the
    memory is one template's ``(C, d)`` features whatever K."""
    import torch

    from starft_cli.prompts import fill
    from starft_cli.train.bank import encode_texts

    rows = []
    for template in templates:
        feats = encode_texts(model, tokenizer, [fill(template, c) for c in classnames], device)
        rows.append(context_prompt_weights(feats[:, None, :]))
    return torch.cat(rows, dim=0)


@register
class CARFT(FT):
    """CAR-FT (Mao et al., "Context-Aware Robust Fine-Tuning", arXiv 2022 / IJCV 2024): cross-entropy fine-tuning
    of the image tower and the zero-shot-initialised head, plus ``lambda x`` the KL divergence from the zero-shot
    model's distribution over *contexts* (the zero-shot templates, each averaged over the class names) to the
    fine-tuned model's (see the module docstring). Defaults: lambda 1.0, the run's zero-shot templates as contexts
    (ImageNet's 80 by default), the teacher's logit scale as the inverse temperature. The paper keeps lambda
    constant, and so does this method by default.

    The context weights are computed once per run (:meth:`setup`) with the frozen teacher's text tower."""

    name = "car-ft"
    title = "cross-entropy plus keeping the zero-shot model's distribution over context prompts"
    source = "Mao, Chen, Jia, Zhang, Xue & Li, Context-Aware Robust Fine-Tuning, arXiv 2211.16175 (2022), IJCV 2024"
    loss_doc = (
        "L = CE(W f(x), y) + lambda * mean_i KL(softmax_k(tau0 <f0(x_i), w_k>) || softmax_k(tau0 <f(x_i), w_k>)), "
        "w_k = the normalised class-average of the frozen text tower's features of context template k, "
        "f0 the frozen zero-shot image tower, tau0 its exp(logit_scale)"
    )
    needs_teacher = True
    regularized = True
    default_lambda = DEFAULT_LAMBDA
    default_lambda_schedule = "constant"  # the authors keep the weight constant
    hparams = (
        HParam(
            "contexts",
            "zero-shot",
            "context prompts: 'zero-shot' (the run's zero-shot templates), a shipped template set or a file",
            kind=str,
        ),
    )

    def setup(self, ctx: RunContext) -> None:
        """The context prompt weights ``self.contexts`` (K, d) and the teacher's logit scale, once per run."""
        if ctx.teacher is None:
            raise ValueError("car-ft needs the frozen zero-shot model (ctx.teacher)")
        templates = context_templates(str(self.hp["contexts"]), ctx.templates)
        self.scale = float(ctx.teacher.logit_scale.exp().item())
        self.contexts = encode_context_weights(ctx.teacher, ctx.tokenizer, ctx.classnames, templates, ctx.device)
        log.debug("car-ft: %d context prompts over %d classes", len(templates), len(ctx.classnames))

    def classifier_loss(self, batch: ClassifierBatch, lam: float, ctx: RunContext) -> LossParts:
        ce = cross_entropy(batch)
        if lam == 0.0:  # weight 0 (end of a decaying schedule): not computed, logged as skipped
            return LossParts(total=ce, main=ce.detach(), reg=ce.new_full((), math.nan))
        if batch.teacher_image is None:
            raise ValueError("car-ft: classifier_loss without the teacher's image features")
        reg = car_ft_regularizer(batch.image, batch.teacher_image, self.contexts, self.scale)
        return LossParts(total=ce + lam * reg, main=ce.detach(), reg=reg.detach())
