"""Weight-space recipes over finished runs of one architecture: WiSE-FT (a zero-shot and a fine-tuned model),
uniform and greedy model soups, and Model Stock. Pure functions over state dicts, plus writers of model folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.errors import WrongArchitectureError

if TYPE_CHECKING:
    import torch

    from starft_cli.models import LoadedModel

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
        elif is_counter(key):  # a BatchNorm step counter: not a weight; the fine-tuned model's count
            out[key] = theta1.to(theta0.device).clone()
        else:
            if not torch.equal(theta0, theta1.to(theta0.device)):
                raise WrongArchitectureError(f"non-float tensor {key} differs between the two models")
            out[key] = theta0.clone()
    return out


COUNTERS = ("num_batches_tracked",)


def is_counter(key: str) -> bool:
    """Whether a state-dict entry is a step counter (BatchNorm's ``num_batches_tracked``), not a weight: runs of
    one model differ in it, and the weight-space recipes take it from a model instead of averaging it."""
    return key.rsplit(".", 1)[-1] in COUNTERS


# The key a classification head travels under through the per-tensor recipes (no open_clip parameter is named so).
HEAD_KEY = "starft.classification_head"


def recipe_heads(
    loaded: list[LoadedModel], device: str | torch.device | None = None
) -> tuple[list[torch.Tensor], list[str], list[str]] | None:
    """The classification heads a weight-space recipe combines, one per model of ``loaded`` ((C, d) each, logit
    scale folded in), with the class names and templates they are for; None when no model has a trained head.

    The classes and templates are those of the first model with a trained head (a classifier run's
    ``head_classnames`` and ``head_templates``). A model without a trained head contributes its zero-shot head for
    them (:func:`starft_cli.zeroshot.side_head`): WiSE-FT's zero-shot side is the zero-shot model with its
    zero-shot head, the head a classifier run starts from (Wortsman et al., CVPR 2022, Sec. 3).

    Raises:
        WrongArchitectureError: two trained heads for different classes.
    """
    from starft_cli.zeroshot import head_templates, side_head

    owner = next((m for m in loaded if m.extra.get("head") is not None), None)
    if owner is None:
        return None
    classnames = list(owner.extra["head_classnames"])
    templates = head_templates(owner)
    heads = []
    for item in loaded:
        names = item.extra.get("head_classnames")
        if item.extra.get("head") is not None and sorted(n.strip().lower() for n in names) != sorted(
            n.strip().lower() for n in classnames
        ):
            raise WrongArchitectureError(
                f"the models' trained heads are for different classes ({', '.join(names)} and {', '.join(classnames)})",
                "Combine runs fine-tuned on the same classes",
            )
        heads.append(side_head(item, classnames, templates, device=device).detach().float().cpu())
    return heads, classnames, templates


def _with_head(state: Mapping[str, torch.Tensor], head: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = dict(state)
    if head is not None:
        out[HEAD_KEY] = head
    return out


def _head_metadata(heads: tuple[list[Any], list[str], list[str]] | None) -> dict[str, Any]:
    return {} if heads is None else {"head_classnames": heads[1], "head_templates": heads[2]}


def write_wise(
    zero_shot: str,
    fine_tuned: str,
    alphas: Iterable[float],
    out: str | os.PathLike[str],
    arch: str | None = None,
) -> list[Path]:
    """Load both model references, check they share an architecture, and write ``OUT/alpha_<a>/`` model folders
    (loadable by every command) for each alpha, each atomically (a failed write leaves none of it, and no empty
    ``OUT`` that this call created).

    A classifier run's trained head is interpolated with the zero-shot head of the zero-shot model for the run's
    classes and templates (:func:`recipe_heads`) and written beside the weights: alpha 0 is the zero-shot model
    with its zero-shot head, alpha 1 the fine-tuned model with its trained head.
    """
    from starft_cli import models
    from starft_cli.paths import atomic_dir

    zs = models.load(zero_shot, arch=arch)
    ft = models.load(fine_tuned, arch=arch)
    if _comparable_cfg(zs.model_cfg) != _comparable_cfg(ft.model_cfg):
        raise WrongArchitectureError(
            f"{zero_shot} and {fine_tuned} are different architectures",
            "Interpolate a fine-tuned model with the model it was fine-tuned from",
        )
    heads = recipe_heads([zs, ft])
    theta0 = _with_head({k: v.detach().clone() for k, v in zs.model.state_dict().items()}, heads and heads[0][0])
    theta1 = _with_head(ft.model.state_dict(), heads and heads[0][1])
    written = []
    with _removed_if_left_empty(Path(out)):
        for alpha in alphas:
            state = wise(theta0, theta1, alpha)
            head = state.pop(HEAD_KEY, None)
            zs.model.load_state_dict(state, strict=True)
            folder = Path(out) / f"alpha_{alpha:g}"
            metadata: dict[str, Any] = {
                "method": "wise-ft",
                "alpha": alpha,
                "zero_shot": zero_shot,
                "fine_tuned": fine_tuned,
                **_head_metadata(heads),
            }
            if "starft" in ft.extra:
                metadata["fine_tuned_metadata"] = ft.extra["starft"]
            with atomic_dir(folder) as tmp:
                models.save_checkpoint(
                    zs.model, tmp, zs.model_cfg, zs.preprocess_cfg, arch=zs.arch or ft.arch, metadata=metadata,
                    head=head,
                )  # fmt: skip
            logger.info("alpha %g -> %s", alpha, folder)
            written.append(folder)
    theta0.pop(HEAD_KEY, None)
    zs.model.load_state_dict(theta0, strict=True)
    return written


@contextmanager
def _removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Around writing into ``folder``: when the write fails and ``folder``, created by it, is empty, remove it."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _comparable_cfg(cfg: Mapping[str, Any]) -> str:
    import json

    return json.dumps(cfg, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------
# Model soups and Model Stock: more than two fine-tuned runs of one architecture


def _check_same(states: list[Mapping[str, torch.Tensor]], what: str) -> None:
    """Every state dict finite, with the keys and shapes of the first (one architecture)."""
    from starft_cli.models import check_finite_weights

    for k, state in enumerate(states):
        check_finite_weights(state, f"{what} {k + 1}")
    first = states[0]
    for k, state in enumerate(states[1:], start=2):
        if set(state) != set(first):
            only = sorted(set(state) ^ set(first))
            raise WrongArchitectureError(
                f"{what} {k} has other parameters than {what} 1 ({len(only)} differ, e.g. {only[0]})",
                "Combine runs of one architecture, fine-tuned from the same model",
            )
        for key, value in first.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise WrongArchitectureError(
                    f"parameter {key} has shape {tuple(state[key].shape)} in {what} {k} and {tuple(value.shape)} in "
                    f"{what} 1",
                    "Combine runs of one architecture, fine-tuned from the same model",
                )


def uniform_soup(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform model soup (Wortsman et al., ICML 2022): the element-wise mean of N runs' weights, computed in
    float64 and cast back; non-float tensors must be equal and are copied.

    Raises:
        UsageError: no run given.
        WrongArchitectureError: the runs differ in keys, shapes or non-float tensors.
        NonFiniteWeightsError: a run holds NaN or inf.
    """
    import torch

    from starft_cli.errors import UsageError

    if not states:
        raise UsageError("a soup needs at least one run")
    _check_same(list(states), "run")
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = sum(s[key].to(first.device).double() for s in states)
            out[key] = (total / len(states)).to(first.dtype)
        elif is_counter(key):
            out[key] = first.clone()
        else:
            if not all(torch.equal(first, s[key].to(first.device)) for s in states[1:]):
                raise WrongArchitectureError(f"non-float tensor {key} differs between the runs")
            out[key] = first.clone()
    return out


def greedy_soup(
    states: list[Mapping[str, torch.Tensor]], score: Callable[[Mapping[str, torch.Tensor]], float]
) -> tuple[dict[str, torch.Tensor], list[int], list[float]]:
    """The greedy model soup (Wortsman et al., ICML 2022, Recipe 1), as their reference code runs it: sort the runs
    by their held-out ID validation ``score`` (higher is better), best first, runs of equal score the later-listed
    first (the reference sorts ascending and reverses); start from the best run and add each next run to the soup
    only if the uniform soup of the chosen runs plus it scores strictly higher than the soup without it.

    Returns ``(soup weights, indices of the chosen runs in the order added, the scores of the individual runs)``.
    ``score`` is called once per run and once per candidate soup.
    """
    if not states:
        from starft_cli.errors import UsageError

        raise UsageError("a soup needs at least one run")
    _check_same(list(states), "run")
    individual = [float(score(s)) for s in states]
    order = sorted(range(len(states)), key=lambda i: (-individual[i], -i))
    chosen = [order[0]]
    soup = uniform_soup([states[order[0]]])
    best = individual[order[0]]
    for index in order[1:]:
        candidate = uniform_soup([states[i] for i in [*chosen, index]])
        value = float(score(candidate))
        logger.info("greedy soup: adding run %d gives %.4f (soup so far %.4f)", index + 1, value, best)
        if value > best:
            chosen.append(index)
            soup, best = candidate, value
    return soup, chosen, individual


def model_stock(
    pretrained: Mapping[str, torch.Tensor], fine_tuned: list[Mapping[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Model Stock (Jang et al., ECCV 2024): per layer (each floating tensor), with ``w0`` the pre-trained weights
    and ``w_1..w_N`` (N >= 2) fine-tuned runs, ``cos`` = the mean cosine between the pairs of task vectors
    ``w_i - w0`` (the angle between the two for N = 2), ``t = N cos / (1 + (N - 1) cos)`` and
    ``w = t * mean_i(w_i) + (1 - t) * w0``.

    A run that left a layer unchanged (a zero task vector, e.g. a frozen tower) has no direction, so its angle to
    the others is undefined. Rule: its cosine with every other run counts as 0 (orthogonal), and it stays in the
    mean. This is what the authors' code computes (it divides by the norms plus a small epsilon, so a zero vector
    gives cosine 0, angle 90 degrees). The reasoning: an unchanged layer is no evidence that fine-tuning moved
    the layer in a consistent direction, so it pulls ``t`` towards 0, towards the pre-trained weights. For N = 2
    that gives ``t = 0``: the layer keeps ``w0``. When every run left it unchanged, ``t = 0`` and ``w0`` again.

    Returns ``(weights, t per layer)``. Raises :class:`~starft_cli.errors.UsageError` for fewer than two runs and
    :class:`WrongArchitectureError` for runs of another architecture.
    """
    import itertools

    import torch

    from starft_cli.errors import UsageError

    if len(fine_tuned) < 2:
        raise UsageError(
            "Model Stock needs at least two fine-tuned runs", "Give two or more in `fine_tuned`", param="fine_tuned"
        )
    _check_same([pretrained, *fine_tuned], "model")
    n = len(fine_tuned)
    out: dict[str, torch.Tensor] = {}
    ratios: dict[str, float] = {}
    for key, w0 in pretrained.items():
        if is_counter(key):
            out[key] = fine_tuned[0][key].to(w0.device).clone()
            continue
        if not w0.is_floating_point():
            if not all(torch.equal(w0, w[key].to(w0.device)) for w in fine_tuned):
                raise WrongArchitectureError(f"non-float tensor {key} differs between the models")
            out[key] = w0.clone()
            continue
        base = w0.double().flatten()
        deltas = [w[key].to(w0.device).double().flatten() - base for w in fine_tuned]
        norms = [float(d.norm()) for d in deltas]
        cosines = [  # a zero task vector: cosine 0 (see the docstring)
            float(a @ b) / (na * nb) if na > 0.0 and nb > 0.0 else 0.0
            for (a, na), (b, nb) in itertools.combinations(zip(deltas, norms, strict=True), 2)
        ]
        cos = sum(cosines) / len(cosines)
        t = n * cos / (1.0 + (n - 1) * cos)
        average = sum(w[key].to(w0.device).double() for w in fine_tuned) / n
        out[key] = (t * average + (1.0 - t) * w0.double()).to(w0.dtype)
        ratios[key] = t
    return out, ratios


SOUP_METHODS = ("uniform", "greedy", "model-stock")


def _head_rows(heads: tuple[list[Any], list[str], list[str]] | None, classnames: list[str]) -> list[int] | None:
    """The rows of a recipe head for ``classnames`` (compared ignoring case and surrounding spaces), or None when
    there is no head or it does not cover them (a warning: the zero-shot head of each candidate is used)."""
    if heads is None:
        return None
    if list(heads[1]) == list(classnames):  # the training classes themselves: row for row (names may repeat)
        return list(range(len(classnames)))
    index = {n.strip().lower(): i for i, n in enumerate(heads[1])}
    rows = [index.get(c.strip().lower()) for c in classnames]
    if any(r is None for r in rows):
        logger.warning(
            "the runs' head does not cover the validation classes: the greedy soup scores each candidate with its "
            "zero-shot head"
        )
        return None
    return [int(r) for r in rows if r is not None]


def write_soup(
    method: str,
    runs: list[str],
    out: str | os.PathLike[str],
    *,
    pretrained: str | None = None,
    val_data: str | None = None,
    val_split: str | None = None,
    data_root: str | None = None,
    device: str = "cpu",
) -> tuple[Path, dict[str, Any]]:
    """Combine finished runs (model references) into one model folder ``out`` (loadable by every command).

    ``uniform``: the mean of the runs; ``greedy``: the greedy soup on ``val_data``'s top-1 accuracy (each
    candidate with its own head: the soup of the runs' heads, or the zero-shot head of the candidate when no run
    has a trained head or the head does not cover ``val_data``'s classes); ``model-stock``: Model Stock from
    ``pretrained`` and the runs. Classifier runs' trained heads are combined like the weights (:func:`recipe_heads`;
    the pre-trained side's head is its zero-shot head) and written beside them. The folder is written atomically.
    Returns the folder and what was decided (chosen runs and scores, or the mean interpolation ratio).

    Raises :class:`~starft_cli.errors.UsageError` for a wrong combination of arguments.
    """
    from starft_cli import models
    from starft_cli.errors import UsageError
    from starft_cli.paths import atomic_dir

    if method not in SOUP_METHODS:
        raise UsageError(f"unknown soup method '{method}'", f"Use one of {', '.join(SOUP_METHODS)}")
    if method == "model-stock" and pretrained is None:
        raise UsageError(
            "Model Stock needs the pre-trained model the runs started from",
            "Pass it as `pretrained`",
            param="pretrained",
        )
    if method != "model-stock" and pretrained is not None:
        raise UsageError(f"`pretrained` is for model-stock, not {method}", "Drop it", param="pretrained")
    if method == "greedy" and val_data is None:
        raise UsageError(
            "the greedy soup needs held-out ID validation data",
            "Pass `val_data` (and `val_split`)",
            param=("val_data", "val_split"),
        )
    if method != "greedy" and val_data is not None:
        raise UsageError(f"`val_data` is for the greedy soup, not {method}", "Drop it", param="val_data")
    if len(runs) < (2 if method == "model-stock" else 1):
        raise UsageError(f"{method} needs more runs", "Give every fine-tuned run in `runs`", param="runs")
    loaded = [models.load(r, device=device) for r in runs]
    base = models.load(pretrained, device=device) if pretrained is not None else loaded[0]
    for ref, item in zip(runs, loaded, strict=True):
        if _comparable_cfg(item.model_cfg) != _comparable_cfg(base.model_cfg):
            raise WrongArchitectureError(f"{ref} is another architecture than {pretrained or runs[0]}")
    # a classifier run's trained head is combined like every other layer (runs without one: their zero-shot head)
    heads = recipe_heads([base, *loaded] if pretrained is not None else loaded, device=device)
    run_heads: list[Any] = [None] * len(runs) if heads is None else heads[0][-len(runs) :]
    states = [
        _with_head({k: v.detach().clone() for k, v in m.model.state_dict().items()}, h)
        for m, h in zip(loaded, run_heads, strict=True)
    ]
    info: dict[str, Any] = {"method": method, "runs": list(runs)}
    if method == "uniform":
        state = uniform_soup(states)
    elif method == "greedy":
        import torch

        from starft_cli.data.registry import load_dataset
        from starft_cli.train.validate import accuracy

        dataset = load_dataset(val_data, data_root, val_split)
        model, where = base.model, torch.device(device)
        rows = _head_rows(heads, dataset.classnames)

        def score(weights: Mapping[str, torch.Tensor]) -> float:
            weights = dict(weights)
            head = weights.pop(HEAD_KEY, None)
            model.load_state_dict(weights, strict=True)
            classify = None
            if head is not None and rows is not None:
                matrix = head[rows].to(where)
                classify = lambda features: features @ matrix.T  # noqa: E731
            return accuracy(
                model, base.tokenizer, base.preprocess, dataset, templates=None, device=where, workers=0, head=classify
            )

        state, chosen, individual = greedy_soup(states, score)
        info.update(chosen=[runs[i] for i in chosen], val_top1={r: v for r, v in zip(runs, individual, strict=True)})
    else:
        theta0 = _with_head({k: v.detach().clone() for k, v in base.model.state_dict().items()}, heads and heads[0][0])
        state, ratios = model_stock(theta0, states)
        info.update(pretrained=pretrained, mean_t=sum(ratios.values()) / max(1, len(ratios)))
        if HEAD_KEY in ratios:
            info["head_t"] = ratios[HEAD_KEY]
    head = state.pop(HEAD_KEY, None)
    base.model.load_state_dict(state, strict=True)
    folder = Path(out)
    metadata = {"weight_space": info, **_head_metadata(heads)}
    with _removed_if_left_empty(folder.parent), atomic_dir(folder) as tmp:
        models.save_checkpoint(
            base.model, tmp, base.model_cfg, base.preprocess_cfg, arch=base.arch, metadata=metadata, head=head
        )
    return folder, info
