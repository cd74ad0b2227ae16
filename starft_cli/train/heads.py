"""The classification head of classifier methods: a bias-free linear layer on normalised image features.

Two parameterisations, equal at initialisation (logits ``exp(logit_scale) x <f(x), t_c>``):

* trained scale (default; WiSE-FT's ``ClassificationHead``): the weight is ``exp(logit_scale) x`` the unit-norm
  class text features, and that scaled weight is what AdamW updates;
* fixed scale (``Method.fixed_head_scale``; Lipsum-FT's code, ``scripts/Lipsum-FT.py``): the weight is the
  unit-norm class features and the logits are multiplied by the zero-shot model's fixed ``exp(logit_scale)``
  (about 100 for CLIP). AdamW moves each weight by about ``lr`` per step whatever its size, so under this
  parameterisation the logits move ``exp(logit_scale)`` times more per step than under the first.

Checkpoints and ``classification_head.safetensors`` always hold the effective weight (logits = features @ W^T),
so evaluation, WiSE-FT and soups read both alike; the training state holds the trained parameter.
"""

from __future__ import annotations

from typing import Any

import torch


class Head(torch.nn.Module):
    """``logits = scale x (x @ weight^T)``: ``weight`` (C, d) is trained, ``scale`` a fixed number (1.0 for the
    trained-scale head). Input ``x`` (n, d), output (n, C) in ``x``'s dtype."""

    def __init__(self, weight: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(x, self.weight)
        return logits if self.scale == 1.0 else logits * self.scale

    def effective_weight(self) -> torch.Tensor:
        """The weight ``W`` with ``logits = x @ W^T`` (C, d), detached: what checkpoints store."""
        return self.weight.detach() * self.scale


def make_head(weights: Any, scale: float | None = None) -> Head:
    """A head from the zero-shot class weights (C, d): trained as given (``scale`` None), or with ``weights`` the
    unit-norm class features and the fixed ``scale`` (e.g. the zero-shot model's ``exp(logit_scale)``)."""
    return Head(torch.as_tensor(weights), 1.0 if scale is None else float(scale))
