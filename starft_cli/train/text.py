"""Text features through only as many positions as the texts need (CLIP's causal text tower)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def encode_text(model: Any, tokens: torch.Tensor, normalize: bool = True, trim: bool = True) -> torch.Tensor:
    """``model.encode_text``, but through only as many positions as the longest text needs.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after the last end-of-text
    token cannot change any feature: dropping it gives the same features for a fraction of the cost (the
    captions and spurious texts are ~15 tokens of a 77-token context). Models of another shape fall back to
    ``encode_text``.
    """
    if not (trim and _trimmable(model)):
        return model.encode_text(tokens, normalize=normalize)
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    if model.text_pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def _trimmable(model: Any) -> bool:
    from open_clip.model import CLIP

    return (
        type(model) is CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and (model.text_pool_type == "argmax" or getattr(model, "text_eos_id", None) is not None)
        and not getattr(model.transformer, "grad_checkpointing", False)
    )
