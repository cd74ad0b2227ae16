"""WiSE-FT: weight-space ensembles of a zero-shot and a fine-tuned model of the same architecture."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.errors import WrongArchitectureError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def wise(
    zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zero_shot + alpha * fine_tuned`` for every floating tensor of two state dicts.

    The state dicts must have the same keys and shapes (the same architecture); integer tensors (none in
    CLIP, but e.g. counters) must be equal and are copied.

    Raises:
        WrongArchitectureError: different keys, shapes or integer tensors.
        NonFiniteWeightsError: either model holds NaN or inf.
    """
    import torch

    from starft_cli.models import check_finite_weights

    check_finite_weights(zero_shot, "the zero-shot model")
    check_finite_weights(fine_tuned, "the fine-tuned model")
    if set(zero_shot) != set(fine_tuned):
        only = sorted(set(zero_shot) ^ set(fine_tuned))
        raise WrongArchitectureError(
            f"the two models have different parameters ({len(only)} differ, e.g. {only[0]})",
            "WiSE-FT needs two checkpoints of the same architecture",
        )
    out: dict[str, torch.Tensor] = {}
    for key, theta0 in zero_shot.items():
        theta1 = fine_tuned[key]
        if tuple(theta0.shape) != tuple(theta1.shape):
            raise WrongArchitectureError(
                f"parameter {key} has shape {tuple(theta0.shape)} in the zero-shot model and "
                f"{tuple(theta1.shape)} in the fine-tuned one",
                "WiSE-FT needs two checkpoints of the same architecture",
            )
        if theta0.is_floating_point():
            mixed = (1.0 - alpha) * theta0.double() + alpha * theta1.to(theta0.device).double()
            out[key] = mixed.to(theta0.dtype)
        else:
            if not torch.equal(theta0, theta1.to(theta0.device)):
                raise WrongArchitectureError(f"non-float tensor {key} differs between the two models")
            out[key] = theta0.clone()
    return out


def write_wise(
    zero_shot: str,
    fine_tuned: str,
    alphas: Iterable[float],
    out: str | os.PathLike[str],
    arch: str | None = None,
) -> list[Path]:
    """Load both model references, check they share an architecture, and write ``OUT/alpha_<a>/`` model folders
    (loadable by every command) for each alpha."""
    from starft_cli import models

    zs = models.load(zero_shot, arch=arch)
    ft = models.load(fine_tuned, arch=arch)
    if _comparable_cfg(zs.model_cfg) != _comparable_cfg(ft.model_cfg):
        raise WrongArchitectureError(
            f"{zero_shot} and {fine_tuned} are different architectures",
            "Interpolate a fine-tuned model with the model it was fine-tuned from",
        )
    theta0 = {k: v.detach().clone() for k, v in zs.model.state_dict().items()}
    theta1 = ft.model.state_dict()
    written = []
    for alpha in alphas:
        state = wise(theta0, theta1, alpha)
        zs.model.load_state_dict(state, strict=True)
        folder = Path(out) / f"alpha_{alpha:g}"
        metadata: dict[str, Any] = {
            "method": "wise-ft",
            "alpha": alpha,
            "zero_shot": zero_shot,
            "fine_tuned": fine_tuned,
        }
        if "starft" in ft.extra:
            metadata["fine_tuned_metadata"] = ft.extra["starft"]
        models.save_checkpoint(
            zs.model, folder, zs.model_cfg, zs.preprocess_cfg, arch=zs.arch or ft.arch, metadata=metadata
        )
        logger.info("alpha %g -> %s", alpha, folder)
        written.append(folder)
    zs.model.load_state_dict(theta0, strict=True)
    return written


def _comparable_cfg(cfg: Mapping[str, Any]) -> str:
    import json

    return json.dumps(cfg, sort_keys=True, default=str)
