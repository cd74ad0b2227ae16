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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The regulariser's default weight (the paper's beta).
DEFAULT_LAMBDA = 1.0


def context_prompt_weights(features: torch.Tensor) -> torch.Tensor:
    """Context prompt weights ``(K, d)`` from the text features of every (class, template) pair; float32 (float64
    for float64 input).

    ``features``: ``(C, K, d)``, the frozen text tower's features of template k filled with class c (normalised
    here, so raw features are fine). Each template's weight is the class-average of its normalised features,
    renormalised to unit length.
    """
    feats = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
    return F.normalize(feats.mean(dim=0), dim=-1)


def context_log_probs(image: torch.Tensor, contexts: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Log of the context distribution ``log softmax_k(scale * <image_i, w_k>)``, shape ``(n, K)``, float32
    (float64 for float64 inputs).

    ``image``: ``(n, d)`` normalised image features; ``contexts``: ``(K, d)`` context prompt weights;
    ``scale``: the pre-trained ``exp(logit_scale)``.
    """
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
    with torch.autocast(device_type=image.device.type, enabled=False):
        log_p = context_log_probs(image, contexts, scale)
        log_p0 = context_log_probs(teacher_image, contexts, scale)
        return F.kl_div(log_p, log_p0, log_target=True, reduction="batchmean")
