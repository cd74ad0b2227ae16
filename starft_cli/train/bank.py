"""The teacher's spurious-text bank: features of every (class, template) spurious text, computed once.

The spurious text of a sample depends only on its class and the template drawn, so the frozen teacher's
features of all of them fit in a ``[classes, templates, dim]`` tensor. The bank (and the teacher's caption
features ``[classes, dim]``) is cached on disk, keyed by the teacher's
:func:`~starft_cli.models.model_identity` (weights, model config, tokenizer and context length, dtype, device
type), the class names, the caption template and the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starft_cli.diskcache import Entry, TensorCache, cache_key
from starft_cli.prompts import fill

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 1024


def strip_period(caption: str) -> str:
    """The caption without its final period: the text that fills a spurious template's slot."""
    caption = caption.rstrip()
    return caption[:-1] if caption.endswith(".") else caption


def spurious_text(template: str, caption: str) -> str:
    """``"{} in snowy landscapes."`` + ``"a photo of a goldfish."``
    -> ``"a photo of a goldfish in snowy landscapes."``"""
    return fill(template, strip_period(caption))


def class_captions(classnames: Sequence[str], caption_template: str) -> list[str]:
    return [fill(caption_template, name) for name in classnames]


@dataclass
class TextBank:
    """``spurious[c, k]``: teacher features of template ``k`` filled with class ``c``'s caption;
    ``captions[c]``: teacher features of class ``c``'s caption. Both L2-normalised, float32."""

    spurious: torch.Tensor
    captions: torch.Tensor

    def to(self, device: torch.device) -> TextBank:
        return TextBank(self.spurious.to(device), self.captions.to(device))


# The teacher's bank per (model identity, class names, caption template, pool): see bank_key.
BANK_CACHE: TensorCache[TextBank] = TensorCache("spurious_bank", "spurious bank")


def bank_key(identity: str, classnames: Sequence[str], caption_template: str, pool: Sequence[str]) -> str:
    """Cache key of a bank: the teacher's model identity, the class names, the caption template and the pool."""
    return cache_key({"model": identity, "c": list(classnames), "cap": caption_template, "pool": list(pool)})


def encode_texts(model: Any, tokenizer: Callable[..., Any], texts: Sequence[str], device: torch.device) -> torch.Tensor:
    """L2-normalised float32 text features of ``texts`` (no autograd, in chunks), with ``model`` in eval mode (no
    dropout; the student's own text tower may be the source): each module's mode is restored afterwards."""
    import torch

    from starft_cli.train.text import encode_text

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    out = []
    try:
        with torch.no_grad():  # not inference_mode: the bank is later saved for backward by the loss
            for start in range(0, len(texts), ENCODE_CHUNK):
                tokens = tokenizer(list(texts[start : start + ENCODE_CHUNK])).to(device)
                out.append(encode_text(model, tokens, normalize=True).float())
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(out, dim=0)


def build_bank(
    model: Any,
    tokenizer: Callable[..., Any],
    classnames: Sequence[str],
    caption_template: str,
    pool: Sequence[str],
    device: torch.device,
) -> TextBank:
    captions = class_captions(classnames, caption_template)
    texts = [spurious_text(t, cap) for cap in captions for t in pool]
    spurious = encode_texts(model, tokenizer, texts, device).view(len(classnames), len(pool), -1)
    return TextBank(spurious=spurious, captions=encode_texts(model, tokenizer, captions, device))


def cached_bank(
    model: Any,
    tokenizer: Callable[..., Any],
    fingerprint: str,
    classnames: Sequence[str],
    caption_template: str,
    pool: Sequence[str],
    device: torch.device,
    use_cache: bool = True,
) -> TextBank:
    """:func:`build_bank`, cached under ``<cache>/spurious_bank``. ``fingerprint`` is the teacher's
    :func:`~starft_cli.models.weights_fingerprint`; the key is its full :func:`~starft_cli.models.model_identity`."""
    from starft_cli.models import model_identity

    identity = model_identity(model, tokenizer, fingerprint=fingerprint, device=device)
    key = bank_key(identity, classnames, caption_template, pool)

    def decode(entry: Entry) -> TextBank | None:
        bank = TextBank(spurious=entry.tensors["spurious"], captions=entry.tensors["captions"])
        return bank if tuple(bank.spurious.shape[:2]) == (len(classnames), len(pool)) else None

    bank, hit = BANK_CACHE.get_or_compute(
        key,
        lambda: build_bank(model, tokenizer, classnames, caption_template, pool, device),
        encode=lambda bank: Entry({"spurious": bank.spurious, "captions": bank.captions}),
        decode=decode,
        use_cache=use_cache,
    )
    if hit:
        logger.info("spurious bank read from %s", BANK_CACHE.path(key))
        return bank.to(device)
    return bank
