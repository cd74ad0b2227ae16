"""Zero-shot heads (class names x templates -> class embeddings), their disk cache, and classification."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.diskcache import Entry, TensorCache, cache_key
from starft_cli.errors import DataError, UsageError
from starft_cli.prompts import fill, load_templates

if TYPE_CHECKING:
    import torch

    from starft_cli.models import LoadedModel, ModelRef

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
# Unscaled class embeddings ``head [C, D]`` per (model identity, class names, templates): see head_cache_key.
HEAD_CACHE: TensorCache[torch.Tensor] = TensorCache("heads", "zero-shot head")


def validate_labels(labels: Sequence[str]) -> list[str]:
    """Strip labels; refuse empty and duplicate ones."""
    cleaned = [label.strip() for label in labels]
    if not cleaned:
        raise UsageError("no labels given", "Give two or more class names in `labels`", param="labels")
    if any(not label for label in cleaned):
        raise UsageError("empty label in the label list", "Remove the empty entry (look for ',,' or a trailing comma)")
    seen: set[str] = set()
    dupes = sorted({label for label in cleaned if label in seen or seen.add(label)})
    if dupes:
        raise UsageError(f"duplicate labels: {', '.join(dupes)}", "Give each label once")
    if len(cleaned) < 2:
        raise UsageError(
            "classification needs at least two labels", "Give two or more class names in `labels`", param="labels"
        )
    return cleaned


def check_prompts(tokenizer: Callable[..., Any], classnames: Sequence[str], templates: Sequence[str]) -> None:
    """Refuse class names whose prompts are identical once tokenized (then the two classes get one embedding and
    one of them can never be predicted), and warn when prompts are cut at the text tower's context length.

    Two different names that tokenize alike (case, punctuation, or a difference past the context length) raise
    :class:`~starft_cli.errors.DataError` naming both. The same name twice (ImageNet's standard class list has
    'missile' and 'sunglasses' twice; the benchmark keeps them, as published results do) is a warning.
    Tokenizes every prompt once (``[C * T, context_length]``).
    """
    import torch

    names = list(classnames)
    prompts = [fill(t, name) for name in names for t in templates]
    tokens = torch.as_tensor(tokenizer(prompts))
    if tokens.ndim != 2 or tokens.shape[0] != len(prompts):  # a tokenizer we do not know how to read
        return
    context = tokens.shape[1]
    pad = torch.as_tensor(tokenizer([""]))[0, -1]
    full = (tokens[:, -1] != pad).nonzero().flatten().tolist()  # prompts that fill the context: cut, or exactly fit
    truncated = [prompts[i] for i in full]
    if full:
        try:  # one token more: which of them really were cut
            longer = torch.as_tensor(tokenizer(truncated, context_length=context + 1))
            truncated = [p for p, t in zip(truncated, longer[:, -1].tolist(), strict=True) if t != pad]
        except TypeError:  # a tokenizer without a context_length argument: count them all
            pass
    if truncated:
        logger.warning(
            "%d of %d prompts are longer than the text tower's context length (%d tokens) and are truncated, e.g. '%s'",
            len(truncated),
            len(prompts),
            context,
            truncated[0],
        )
    per_class = tokens.reshape(len(names), len(templates) * context)
    first: dict[bytes, int] = {}
    for index in range(len(names)):
        key = per_class[index].numpy().tobytes()
        other = first.setdefault(key, index)
        if other == index:
            continue
        name = names[index]
        if names[other] == name:
            logger.warning("classes %d and %d are both named '%s': they share one embedding", other, index, name)
            continue
        cut = f" (the text tower reads only {context} tokens)" if truncated else ""
        raise DataError(
            f"class names '{names[other]}' and '{names[index]}' give identical prompts once tokenized{cut}",
            "Rename one of them so that they differ in more than case, punctuation or spacing"
            + (", within the context length" if truncated else ""),
        )


def zero_shot_head(
    model: Any,
    tokenizer: Callable[..., Any],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device | None = None,
    scale: bool = True,
) -> torch.Tensor:
    """Class embeddings ``[C, D]``: each template filled with the class name, encoded, L2-normalised,
    averaged over templates and renormalised; multiplied by ``exp(logit_scale)`` when ``scale``. The prompts are
    checked first (:func:`check_prompts`: distinct once tokenized; a warning when truncated).

    ``logits = normalize(image_features) @ head.T``.
    """
    import open_clip
    import torch

    if not classnames:
        raise UsageError("no class names")
    if not templates:
        raise UsageError("no templates")
    check_prompts(tokenizer, classnames, templates)
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            weights = open_clip.build_zero_shot_classifier(
                model,
                tokenizer,
                classnames=list(classnames),
                templates=[_template_fn(t) for t in templates],
                num_classes_per_batch=max(1, 256 // len(templates)),
                device=device,
            )
    finally:
        model.train(was_training)
    head = weights.T.contiguous().float()
    if scale:
        head = head * model.logit_scale.detach().exp().float()
    return head


def _template_fn(template: str) -> Callable[[str], str]:
    return lambda classname: fill(template, classname)


def head_cache_key(identity: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Cache key of a head: the model's :func:`~starft_cli.models.model_identity` (weights, model and preprocessing
    config, tokenizer, dtype, device type), the class names and the templates."""
    return cache_key({"model": identity, "c": list(classnames), "t": list(templates)})


def trained_head(
    loaded: LoadedModel, classnames: Sequence[str], device: str | torch.device | None = None
) -> torch.Tensor | None:
    """The trained classification head of a classifier method's checkpoint (``ft``, ``lp``, ``lp-ft``, ``l2-sp``,
    ``lipsum-ft``, ``car-ft``), rows in the order of ``classnames``: (C, d), logit scale folded in, like the scaled
    zero-shot head. None when the model has no trained head, or when the head does not cover every one of
    ``classnames`` (compared ignoring case and surrounding spaces): a zero-shot head then applies."""
    head, names = loaded.extra.get("head"), loaded.extra.get("head_classnames")
    if head is None or not names:
        return None
    if list(names) == list(classnames):  # the training classes themselves: row for row (names may repeat)
        rows: list[int | None] = list(range(len(names)))
    else:
        index = {n.strip().lower(): i for i, n in enumerate(names)}
        rows = [index.get(c.strip().lower()) for c in classnames]
    if any(r is None for r in rows):
        return None
    device = device if device is not None else next(loaded.model.parameters()).device
    return head[rows].to(device)


def head_templates(loaded: LoadedModel) -> list[str]:
    """The templates a classifier run's head was initialised from (its zero-shot head): the checkpoint's
    ``head_templates``, else (checkpoints written before it was recorded) the run's ``val_templates``, else its
    training dataset's default templates, else ``imagenet80`` (the rule the training loop follows)."""
    recorded = loaded.extra.get("head_templates")
    if recorded:
        return list(recorded)
    meta = loaded.extra.get("starft", {})
    hparams = meta.get("hyperparameters") if isinstance(meta.get("hyperparameters"), dict) else {}
    name = hparams.get("val_templates")
    data = hparams.get("data")
    if not name and isinstance(data, str):
        from starft_cli.data.registry import get_builder, is_generic

        if not is_generic(data):
            try:
                name = get_builder(data).info.templates
            except DataError:
                name = None
    return load_templates(name or "imagenet80")


def side_head(
    loaded: LoadedModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The head one side of a weight-space recipe (WiSE-FT, a soup, Model Stock) contributes for ``classnames``:
    its trained head (:func:`trained_head`) when it has one covering them, else its zero-shot head for
    ``classnames`` and ``templates`` (scaled by its own ``exp(logit_scale)``, exactly as a classifier run
    initialises its head: :func:`zero_shot_head`). (C, d) on ``device``."""
    head = trained_head(loaded, classnames, device=device)
    if head is not None:
        return head
    return zero_shot_head(loaded.model, loaded.tokenizer, classnames, templates, device=device, scale=True)


def cached_zero_shot_head(
    loaded: LoadedModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Like :func:`zero_shot_head` (scaled), cached on disk under ``<cache>/heads`` (:data:`HEAD_CACHE`)."""
    import torch

    from starft_cli.models import model_identity

    device = device if device is not None else next(loaded.model.parameters()).device
    scale = loaded.model.logit_scale.detach().exp().float().to(device)
    key = head_cache_key(model_identity(loaded, device=device), classnames, templates)

    def decode(entry: Entry) -> torch.Tensor | None:
        head = entry.tensors["head"]
        return head if head.shape[0] == len(classnames) else None

    head, _ = HEAD_CACHE.get_or_compute(
        key,
        lambda: zero_shot_head(loaded.model, loaded.tokenizer, classnames, templates, device=device, scale=False),
        encode=lambda head: Entry({"head": head}),
        decode=decode,
        use_cache=use_cache,
    )
    return head.to(device) * scale if isinstance(head, torch.Tensor) else head


def classify(
    images: Sequence[str | Path],
    labels: Sequence[str],
    model: str | ModelRef | LoadedModel = "ViT-B-16",
    templates: str | Sequence[str] = "ensemble",
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    top_k: int | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
    skipped: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Classify image files: with the model's trained head (a classifier method's checkpoint) when ``labels`` are
    among its classes (a warning says when they are not), else zero-shot.

    Returns, per readable image, ``{"image", "predictions": [{"label",
    "probability"}]}`` with predictions best first (all labels, or the ``top_k`` best); probabilities sum to 1
    over all labels. Images are read as photos: the EXIF orientation is applied.

    An unreadable image is skipped with a warning and its message appended to ``skipped``; with ``strict``, or
    when no image at all can be read, :class:`~starft_cli.errors.ImageError` is raised naming the file.
    """
    import torch

    from starft_cli.errors import ImageError
    from starft_cli.images import open_image
    from starft_cli.models import ModelRef, load

    labels = validate_labels(labels)
    if batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1 (got {batch_size})", param="batch_size")
    if top_k is not None and top_k < 1:
        raise UsageError(f"`top_k` must be at least 1 (got {top_k})", param="top_k")
    template_list = load_templates(templates) if isinstance(templates, str | Path) else list(templates)
    loaded = load(model, device=device) if isinstance(model, str | ModelRef) else model
    device = next(loaded.model.parameters()).device
    head = trained_head(loaded, labels, device=device)
    if head is None:
        if loaded.extra.get("head") is not None:
            logger.warning(
                "the labels are not among the classes of the model's trained head (%s): the zero-shot head of the "
                "labels is used",
                ", ".join(loaded.extra.get("head_classnames") or []),
            )
        head = cached_zero_shot_head(loaded, labels, template_list, device=device)
    k = min(top_k or len(labels), len(labels))

    results: list[dict[str, Any]] = []
    bad: list[ImageError] = []
    paths = [Path(p) for p in images]
    for start in range(0, len(paths), batch_size):
        chunk: list[Path] = []
        tensors = []
        for path in paths[start : start + batch_size]:
            try:
                tensors.append(loaded.preprocess(open_image(path, exif_transpose=True)))
                chunk.append(path)
            except ImageError as exc:
                if strict:
                    raise ImageError(
                        exc.message, "Remove or replace the file, or run without `strict` to skip it", param="strict"
                    ) from None
                bad.append(exc)
        if chunk:
            batch = torch.stack(tensors).to(device)
            with torch.inference_mode():
                features = loaded.model.encode_image(batch, normalize=True).float()
                probs = (features @ head.T).softmax(dim=-1).cpu()
            top = probs.topk(k, dim=-1)
            for path, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
                results.append(
                    {
                        "image": str(path),
                        "predictions": [
                            {"label": labels[i], "probability": float(v)} for v, i in zip(values, indices, strict=True)
                        ],
                    }
                )
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    if bad and not results:
        if len(bad) == 1:
            raise bad[0]
        raise ImageError(f"none of the {len(bad)} images could be read (e.g. {bad[0].message})", bad[0].hint)
    for exc in bad:
        logger.warning("skipping unreadable image: %s", exc.message)
        if skipped is not None:
            skipped.append(exc.message)
    return results
