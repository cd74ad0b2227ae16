"""The optimizer's parameter groups: which parameters get weight decay (``--wd-scope``).

Two conventions are in use for fine-tuning CLIP with AdamW:

* ``open-clip`` (starft's default): open_clip's training code exempts gains, biases and the logit scale, i.e.
  every tensor with fewer than two dimensions and every parameter whose name marks a bias, a LayerNorm / BatchNorm
  or the logit scale (open_clip ``training/main.py``, its ``exclude`` rule);
* ``all``: every trained parameter is decayed, as ``torch.optim.AdamW(model.parameters(), weight_decay=wd)`` does.
  This is what the StarFT, FLYP, WiSE-FT and CaRot reference code does (``src/main.py`` of each), so the paper
  recipes use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

WD_SCOPES = ("open-clip", "all")


def exempt_from_decay(name: str, param: Any) -> bool:
    """open_clip's rule: no weight decay for 1-D (or 0-D) tensors, biases, norms (``ln``/``bn`` in the name) and
    the logit scale. ``param`` is a tensor (only its ``ndim`` is read)."""
    return param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name or "logit_scale" in name


def decay_groups(named_params: Iterable[tuple[str, Any]], wd: float, scope: str) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``named_params`` (the trained parameters, ``(name, tensor)``):
    ``[{"params": exempt, "weight_decay": 0.0}, {"params": decayed, "weight_decay": wd}]``, the first group empty
    under ``scope="all"``. The order of parameters inside each group follows ``named_params`` (the optimizer's
    state_dict, and so a resume, depend on it).

    Raises:
        ValueError: an unknown ``scope`` (the configuration refuses it first, naming the flag).
    """
    if scope not in WD_SCOPES:
        raise ValueError(f"unknown weight-decay scope {scope!r}")
    params = list(named_params)
    if scope == "all":
        exempt, decayed = [], [p for _, p in params]
    else:
        exempt = [p for n, p in params if exempt_from_decay(n, p)]
        decayed = [p for n, p in params if not exempt_from_decay(n, p)]
    return [{"params": exempt, "weight_decay": 0.0}, {"params": decayed, "weight_decay": float(wd)}]
