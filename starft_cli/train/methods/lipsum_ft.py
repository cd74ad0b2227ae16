"""Lipsum-FT: robust fine-tuning guided by random text (Nam, Heo & Lee, ICLR 2024).

Source: G. Nam, B. Heo, J. Lee, "Lipsum-FT: Robust Fine-Tuning of Zero-Shot Models Using Random Text Guidance",
ICLR 2024 (Section 4, the regulariser R-hat), and the authors' code (github.com/cs-giung/lipsum-ft,
``scripts/Lipsum-FT.py``). Restated here in our own words.

The idea: a CLIP model scores an image x against a text t by an *energy*, the scaled cosine similarity
``tau0 * <F(x), G(t)>``. Fine-tuning the image tower for a classification task changes these energies for texts
that have nothing to do with the task, which the paper links to the loss of robustness. Lipsum-FT keeps the
fine-tuned model's energies close to the zero-shot model's against texts made of *random tokens* ("lorem
ipsum"), drawn afresh every step:

* M random texts per step, each ``[start-of-text, r_1 .. r_L, end-of-text, padding]`` with the L tokens drawn
  uniformly from the vocabulary below the two special tokens (the reference draws ids in ``[0, 49406)``; M = 80,
  L = 8 by default). The same texts serve the whole global batch (all processes draw the same ones).
* The texts go through the frozen pre-trained text tower G once per step; features L2-normalised.
* Energies: ``v_m(x) = tau0 * <F(x), G(t_m)>`` for the fine-tuned image tower F_theta and the zero-shot one
  F_theta0, with tau0 = the pre-trained model's ``exp(logit_scale)`` (fixed).
* Regulariser per image: ``(1 / 2M) * sum_m (v_m^theta(x) - v_m^theta0(x))^2``; averaged over the batch.
* Loss: cross-entropy through the zero-shot-initialised head + lambda * regulariser, lambda = 1.0.
"""

from __future__ import annotations

import hashlib

import torch

from starft_cli.errors import ConfigError

#: The paper's defaults (the reference code's ``--feat_regularization``, ``--token_k_ways``, ``--token_length``).
DEFAULT_LAMBDA = 1.0
DEFAULT_NUM_TEXTS = 80
DEFAULT_TEXT_LENGTH = 8


def text_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one optimizer step's random texts: a function of (seed, step) only.

    The seed is a hash of ``("lipsum-ft", seed, step)``, so the stream shares nothing with the other per-step
    draws of a run (template choices, data order) and a resumed run draws exactly the same texts.
    """
    digest = hashlib.sha256(f"lipsum-ft/{int(seed)}/{int(step)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63 - 1))


def random_text_tokens(
    seed: int,
    step: int,
    num_texts: int,
    text_length: int,
    context_length: int,
    sot_id: int,
    eot_id: int,
) -> torch.Tensor:
    """Token ids of one step's random texts, shape ``(num_texts, context_length)``, dtype long, on the CPU.

    Row m is ``[sot_id, r_1, ..., r_L, eot_id, 0, ..., 0]`` with L = ``text_length`` and each r drawn
    uniformly from ``[0, min(sot_id, eot_id))`` (every ordinary token; never a special token, so a text tower
    that pools at the largest id or at the end-of-text id pools at the end-of-text token).

    Raises ``ConfigError`` when the texts do not fit the model's context (``text_length + 2 > context_length``)
    or a count is below 1.
    """
    if num_texts < 1 or text_length < 1:
        raise ConfigError(
            f"lipsum-ft needs at least one random text of at least one token (got {num_texts} x {text_length})",
            "Set num_texts and text_length to 1 or more",
        )
    if text_length + 2 > context_length:
        raise ConfigError(
            f"lipsum-ft text_length {text_length} does not fit the model's text context of {context_length} tokens "
            "(two more are needed for the start and end tokens)",
            f"Use a text_length of at most {context_length - 2}",
        )
    high = min(int(sot_id), int(eot_id))
    draws = torch.randint(high, (num_texts, text_length), generator=text_generator(seed, step), dtype=torch.long)
    tokens = torch.zeros(num_texts, context_length, dtype=torch.long)
    tokens[:, 0] = int(sot_id)
    tokens[:, 1 : 1 + text_length] = draws
    tokens[:, 1 + text_length] = int(eot_id)
    return tokens


def lipsum_energies(image: torch.Tensor, texts: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Energies ``scale * <image_i, text_m>``, shape ``(n, M)``, float32 (float64 for float64 inputs).

    ``image``: ``(n, d)`` L2-normalised image features; ``texts``: ``(M, d)`` L2-normalised text features;
    ``scale``: the pre-trained model's ``exp(logit_scale)`` (about 100 for CLIP), a fixed number.
    """
    dtype = _compute_dtype(image, texts)
    return float(scale) * (image.to(dtype) @ texts.to(dtype).t())


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (never below float32)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def lipsum_regularizer(
    image: torch.Tensor, teacher_image: torch.Tensor, texts: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """The Lipsum-FT regulariser, a scalar (float32; float64 for float64 inputs): the per-image mean of
    ``(1 / 2M) * sum_m (scale * <f(x_i), g_m> - scale * <f0(x_i), g_m>)^2``.

    ``image``: ``(n, d)`` normalised fine-tuned image features (with grad); ``teacher_image``: ``(n, d)``
    normalised zero-shot image features (no grad); ``texts``: ``(M, d)`` normalised features of the step's random
    texts from the frozen pre-trained text tower; ``scale``: the pre-trained ``exp(logit_scale)``. Units: squared
    logits. Computed in float32 whatever the autocast dtype (the difference of two close energies of ~100 needs
    the bits).
    """
    with torch.autocast(device_type=image.device.type, enabled=False):
        diff = lipsum_energies(image, texts, scale) - lipsum_energies(teacher_image, texts, scale)
        return diff.square().sum(dim=1).div(2 * texts.shape[0]).mean()
