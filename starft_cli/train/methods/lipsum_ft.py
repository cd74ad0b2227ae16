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

The paper writes the energy as the plain inner product; the authors' code scales it by the pre-trained
``exp(logit_scale)`` (a factor of about 10^4 on the regulariser for CLIP), and lambda = 1.0 is the code's default
for that scaled form, which is the one implemented here. The paper keeps lambda constant over the run.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from starft_cli.errors import ConfigError
from starft_cli.train.methods import register
from starft_cli.train.methods.base import ClassifierBatch, HParam, LossParts, RunContext
from starft_cli.train.methods.ft import FT, cross_entropy

if TYPE_CHECKING:
    import torch

#: The paper's defaults (the reference code's ``--feat_regularization``, ``--token_k_ways``, ``--token_length``).
DEFAULT_LAMBDA = 1.0
DEFAULT_NUM_TEXTS = 80
DEFAULT_TEXT_LENGTH = 8


def text_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one optimizer step's random texts: a function of (seed, step) only.

    The seed is a hash of ``("lipsum-ft", seed, step)``, so the stream shares nothing with the other per-step
    draws of a run (template choices, data order) and a resumed run draws exactly the same texts.
    """
    import torch

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
    import torch

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
    import torch

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
    import torch

    with torch.autocast(device_type=image.device.type, enabled=False):
        diff = lipsum_energies(image, texts, scale) - lipsum_energies(teacher_image, texts, scale)
        return diff.square().sum(dim=1).div(2 * texts.shape[0]).mean()


def clip_special_tokens(tokenizer: Any, model: Any) -> tuple[int, int, int]:
    """(start-of-text id, end-of-text id, context length) of a CLIP BPE ``tokenizer`` and its ``model``.

    Raises ``ConfigError`` for a tokenizer without CLIP's start/end tokens (random token ids of another
    vocabulary would mean something else).
    """
    sot, eot = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    if sot is None or eot is None:
        raise ConfigError(
            "lipsum-ft draws random tokens of CLIP's BPE vocabulary, and this model's tokenizer has no CLIP "
            "start/end-of-text tokens",
            "Use a model with open_clip's default tokenizer, or another `method`",
            param="method",
        )
    length = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77)
    return int(sot), int(eot), int(length)


@register
class LipsumFT(FT):
    """Lipsum-FT (Nam, Heo & Lee, ICLR 2024): cross-entropy fine-tuning of the image tower and the
    zero-shot-initialised head, plus ``lambda x`` the mean squared gap between the fine-tuned and the zero-shot
    image towers' energies (``tau0 x`` cosine similarity) against ``num_texts`` texts of ``text_length`` random
    tokens, drawn afresh every optimizer step (see the module docstring). Defaults from the paper and its code:
    lambda 1.0, 80 texts of 8 tokens. The paper keeps lambda constant, and so does this method by default.

    The head is parameterised as in the authors' code: the unit-norm zero-shot class features are trained and the
    logits are multiplied by the zero-shot model's fixed exp(logit_scale) (about 100), so a step moves the logits
    about 100 times more than training the scaled head would (starft_cli/train/heads.py); checkpoints hold the
    effective (scaled) head.

    Per step the random texts go through the frozen teacher's text tower once (:meth:`begin_step`), for every
    micro-batch of the step; the texts are a function of (seed, step) only, the same on every process and after a
    resume."""

    name = "lipsum-ft"
    title = "cross-entropy plus matching the zero-shot model's energies against random-token texts"
    source = "Nam, Heo & Lee, Lipsum-FT: Robust Fine-Tuning of Zero-Shot Models Using Random Text Guidance, ICLR 2024"
    loss_doc = (
        "L = CE(W f(x), y) + lambda * mean_i 1/(2M) * sum_m (tau0 <f(x_i), g0(t_m)> - tau0 <f0(x_i), g0(t_m)>)^2, "
        "t_m = M texts of L uniformly random tokens redrawn every step, g0 / f0 the frozen zero-shot towers, "
        "tau0 their exp(logit_scale)"
    )
    needs_teacher = True
    regularized = True
    fixed_head_scale = True  # the authors' head: unit-norm class features x the zero-shot exp(logit_scale), fixed
    default_lambda = DEFAULT_LAMBDA
    default_lambda_schedule = "constant"  # the authors keep the weight constant
    hparams = (
        HParam("num_texts", DEFAULT_NUM_TEXTS, "random texts drawn per optimizer step (M)", kind=int, minimum=1),
        HParam("text_length", DEFAULT_TEXT_LENGTH, "random tokens per text (L)", kind=int, minimum=1),
    )

    def setup(self, ctx: RunContext) -> None:
        """The teacher's logit scale and the tokenizer's special tokens; checks that the texts fit the context."""
        if ctx.teacher is None:
            raise ValueError("lipsum-ft needs the frozen zero-shot model (ctx.teacher)")
        self.scale = float(ctx.teacher.logit_scale.exp().item())
        self.sot, self.eot, self.context_length = clip_special_tokens(ctx.tokenizer, ctx.teacher)
        self._tokens(ctx.seed, 0)  # a text_length that does not fit fails here, before any training
        self.texts: torch.Tensor | None = None

    def _tokens(self, seed: int, step: int) -> torch.Tensor:
        return random_text_tokens(
            seed, step, int(self.hp["num_texts"]), int(self.hp["text_length"]), self.context_length, self.sot, self.eot
        )

    def begin_step(self, ctx: RunContext, step: int) -> None:
        """Draw this step's random texts and encode them once with the frozen text tower: ``self.texts`` (M, d)."""
        import torch

        from starft_cli.train.text import encode_text

        assert ctx.teacher is not None
        with torch.no_grad():
            tokens = self._tokens(ctx.seed, step).to(ctx.device)
            self.texts = encode_text(ctx.teacher, tokens, normalize=True).float()

    def classifier_loss(self, batch: ClassifierBatch, lam: float, ctx: RunContext) -> LossParts:
        ce = cross_entropy(batch)
        if lam == 0.0:  # weight 0 (end of a decaying schedule): not computed, logged as skipped
            return LossParts(total=ce, main=ce.detach(), reg=ce.new_full((), math.nan))
        if batch.teacher_image is None or self.texts is None:
            raise ValueError("lipsum-ft: classifier_loss before begin_step, or without the teacher's image features")
        reg = lipsum_regularizer(batch.image, batch.teacher_image, self.texts, self.scale)
        return LossParts(total=ce + lam * reg, main=ce.detach(), reg=reg.detach())
