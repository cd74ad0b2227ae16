"""Shortcut discovery: which attributes mark a class in a dataset, beyond the class itself (``starft pool discover``).

A zero-shot model reads every image of a split against a vocabulary of attribute phrases (shipped in
``starft_cli/prompts/vocab/``, or the user's), and the attributes it sees far more often in one class than in the
others are the candidate shortcuts; the best of them, in StarFT's template style, are a spurious pool for
``--pool``.

**The statistic** (ours; its parts are standard). Each attribute is a template with one slot (``{} on red
stripes.``), filled, like StarFT's spurious texts, with the class caption (``a photo of a zero on red stripes.``).

1. *The attribute beyond the class.* For class ``c`` and attribute ``a``, the text shift ``t[c, a] - t[c]`` (the
   filled template's text feature minus the caption's) is what the attribute adds to the class. Its component in
   the span of the class captions' features is removed (an orthogonal projection, as Chuang et al., "Debiasing
   Vision-Language Models via Biased Prompts", 2023, project spurious directions out of text embeddings; here the
   class directions are projected out), so that an attribute that restates a class ("the digit zero") adds
   nothing: ``delta[c, a] = P (t[c, a] - t[c])`` with ``P = I - Q Q^T``, ``Q`` an orthonormal basis of the
   captions.
2. *The image's best description.* With its class held fixed (its label), image ``n`` carries the attribute whose
   shift points most its way: ``A_n = argmax_a <x_n, delta[y_n, a]>`` (``x_n`` the L2-normalised image feature).
   The ranking over attributes does not depend on the class part of the text, which is the same for every ``a``.
3. *How strongly an attribute marks a class.* Over the split, the attribute ``A`` and the label ``Y`` have a joint
   distribution (counts of ``(A_n, y_n)``). The mutual information ``I(A; Y)`` (bits; Cover & Thomas, *Elements of
   Information Theory*, eq. 2.28) splits exactly over attributes as ``I(A; Y) = sum_a P(a) KL(P(Y | a) || P(Y))``;
   each term, non-negative, is the attribute's **strength**: how much of the label the attribute gives away. An
   attribute that every class carries equally scores 0, however common; one that only one class carries scores up
   to ``P(a) log2(1 / P(c))``. The class it **marks** is the one of highest lift ``P(c | a) / P(c)``; its
   **share** is ``P(a | c)``, the share of that class's images whose best description it is.

Cost: the image tower once over the split (through the evaluation's feature cache,
:func:`starft_cli.eval.features.compute_features`) and the text tower once over the vocabulary filled with each
class's caption (``classes x phrases`` texts: the StarFT spurious-text bank of the vocabulary,
:func:`starft_cli.train.bank.cached_bank`, cached too). The statistics are pure functions of these features
(:func:`class_free_shifts`, :func:`best_descriptions`, :func:`attribute_strengths`, :func:`group_alignment`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from starft_cli.errors import DataError, TemplateError

if TYPE_CHECKING:
    import torch

    from starft_cli.models import LoadedModel, ModelRef

logger = logging.getLogger(__name__)

DEFAULT_TOP = 20
GROUP_MIN_SHARE = 0.5  # a group lines up with an attribute when at least this share of its images carry it
ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------------------
# the vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Attribute templates (one ``{}`` slot each, distinct) and the category (file name) each came from."""

    templates: list[str]
    categories: list[str]

    def __len__(self) -> int:
        return len(self.templates)


def vocabulary_names() -> list[str]:
    """The shipped vocabulary files (categories): ``colours``, ``lighting``, ``patterns``, ``quality``, ``scenes``,
    ``style``."""
    folder = resources.files("starft_cli.prompts").joinpath("vocab")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def phrase_template(line: str, source: str, number: int) -> str | None:
    """One vocabulary line as a template: None for a blank or ``#`` comment line; a line with one ``{}`` (or
    ``{c}``) slot as it is; a line without a slot is a phrase that follows the subject: ``on red stripes`` ->
    ``{} on red stripes.``. Raises :class:`~starft_cli.errors.TemplateError` for two slots or a stray brace."""
    from starft_cli.prompts import normalise_template, parse_templates

    text = normalise_template(line)
    if not text or text.startswith("#"):
        return None
    if "{" not in text and "}" not in text:
        text = "{} " + text.rstrip(".") + "."
    try:
        return parse_templates([text], source)[0]
    except TemplateError:
        raise TemplateError(
            f"{source}, line {number}: '{line.strip()}' must be a phrase without braces or a template with one slot",
            "Write a phrase such as 'on red stripes' or a template such as 'a blurry photo of {}.'",
        ) from None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TemplateError(f"no such vocabulary file: {path}", "Give a text file with one phrase per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read vocabulary file {path} ({exc})", "Give a UTF-8 text file") from None


def load_vocabulary(files: Sequence[str | Path] = (), shipped: bool = True) -> Vocabulary:
    """The shipped vocabulary (with ``shipped``) and the user's ``files``, one phrase or template per line
    (:func:`phrase_template`), duplicates dropped (the first kept). Raises
    :class:`~starft_cli.errors.TemplateError` for a file without a usable line, a bad line, or no phrase at all."""
    sources: list[tuple[str, str, list[str]]] = []
    if shipped:
        folder = resources.files("starft_cli.prompts").joinpath("vocab")
        for name in vocabulary_names():
            lines = folder.joinpath(f"{name}.txt").read_text(encoding="utf-8").splitlines()
            sources.append((name, f"vocab/{name}", lines))
    for file in files:
        path = Path(file).expanduser()
        sources.append((path.stem, str(path), _read_lines(path)))
    templates: list[str] = []
    categories: list[str] = []
    seen: set[str] = set()
    for category, source, lines in sources:
        usable = [t for n, line in enumerate(lines, 1) if (t := phrase_template(line, source, n)) is not None]
        if not usable:
            raise TemplateError(
                f"vocabulary file {source} holds no phrase", "Put one attribute phrase per line (e.g. 'on a beach')"
            )
        for template in usable:
            if template not in seen:
                seen.add(template)
                templates.append(template)
                categories.append(category)
    if not templates:
        raise TemplateError(
            "the vocabulary is empty", "Give a vocabulary file with `vocab`, or keep the shipped one", param="vocab"
        )
    return Vocabulary(templates, categories)


# ---------------------------------------------------------------------------------------------------------
# the statistic (pure functions of features)


def class_free_shifts(spurious: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """What each attribute adds to each class, with the class directions projected out: ``[C, M, D]``.

    ``spurious [C, M, D]``: text features of template ``m`` filled with class ``c``'s caption; ``captions [C, D]``:
    the captions' features (both L2-normalised). Returns ``(I - Q Q^T)(spurious[c, m] - captions[c])`` with ``Q`` an
    orthonormal basis of the span of ``captions`` (from an SVD; directions with singular value below ``1e-6``
    times the largest are dropped). See the module docstring, step 1. With many classes (more than ``D / 2``, e.g.
    ImageNet's 1000 in 512 dimensions) the captions span nearly the whole space, so only their ``D // 2`` main
    directions (largest singular values) are removed: half the space is left for the attributes.
    """
    import torch

    basis, values, _ = torch.linalg.svd(captions.double().T, full_matrices=False)  # [D, C], values descending
    keep = min(int((values > values.max() * 1e-6).sum()), max(1, captions.shape[1] // 2))
    basis = basis[:, :keep]
    shift = spurious.double() - captions.double()[:, None, :]
    return (shift - (shift @ basis) @ basis.T).float()


def best_descriptions(
    image_features: torch.Tensor, labels: np.ndarray, shifts: torch.Tensor, chunk: int = 4096
) -> np.ndarray:
    """Each image's best description ``A_n = argmax_m <x_n, shifts[y_n, m]>``: int64 ``[N]`` indices into the
    vocabulary. ``image_features [N, D]``, ``labels [N]`` index ``C`` of ``shifts [C, M, D]`` (module docstring,
    step 2). Computed class by class in chunks of ``chunk`` images (memory ``chunk x M``)."""
    import torch

    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros(len(labels), dtype=np.int64)
    feats = image_features.float()
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        for start in range(0, len(index), chunk):
            part = index[start : start + chunk]
            scores = feats[torch.as_tensor(part)] @ shifts[int(c)].float().T
            out[part] = scores.argmax(dim=1).numpy()
    return out


@dataclass(frozen=True)
class Strengths:
    """The attribute x class statistics of :func:`attribute_strengths`, all over the ``M`` attributes:
    ``counts [M, C]`` images of class ``c`` whose best description is ``m``; ``strength [M]`` bits (each
    attribute's term of ``I(A; Y)``); ``marks [M]`` the class of highest lift (-1 for an attribute no image
    carries); ``share [M]`` ``P(a | marked class)``; ``others [M]`` ``P(a | other classes)``; ``lift [M]``
    ``P(marked class | a) / P(marked class)``; ``mutual_information`` ``I(A; Y)`` and ``label_entropy`` ``H(Y)``
    in bits."""

    counts: np.ndarray
    strength: np.ndarray
    marks: np.ndarray
    share: np.ndarray
    others: np.ndarray
    lift: np.ndarray
    mutual_information: float
    label_entropy: float


def attribute_strengths(best: np.ndarray, labels: np.ndarray, num_attributes: int, num_classes: int) -> Strengths:
    """Strength, marked class, share, other-class share and lift of every attribute (module docstring, step 3)
    from the images' best descriptions ``best [N]`` (indices into ``num_attributes``) and labels ``labels [N]``
    (indices into ``num_classes``). A class without images has ``P(c) = 0`` and is never marked.

    Raises :class:`~starft_cli.errors.DataError` for no image or fewer than two classes with images.
    """
    best = np.asarray(best, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(best) == 0:
        raise DataError("no image to discover attributes on")
    counts = np.zeros((num_attributes, num_classes), dtype=np.int64)
    np.add.at(counts, (best, labels), 1)
    per_class = counts.sum(axis=0).astype(np.float64)
    if np.count_nonzero(per_class) < 2:
        raise DataError(
            "the split holds one class: an attribute can only mark a class against others",
            "Use a split with images of at least two classes",
        )
    n = float(len(best))
    joint = counts / n
    p_attr = joint.sum(axis=1)
    p_class = per_class / n
    expected = p_attr[:, None] * p_class[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log2(joint / np.where(expected > 0, expected, 1.0)), 0.0)
        lift = np.where(expected > 0, joint / np.where(expected > 0, expected, 1.0), 0.0)
    strength = np.clip(terms.sum(axis=1), 0.0, None)  # >= 0 exactly; clip float rounding below 0
    marks = np.where(p_attr > 0, np.argmax(np.where(p_class[None, :] > 0, lift, -1.0), axis=1), -1)
    rows = np.arange(num_attributes)
    marked = np.clip(marks, 0, None)
    share = np.where(marks >= 0, counts[rows, marked] / np.maximum(per_class[marked], 1.0), 0.0)
    rest = n - per_class[marked]
    others = np.where(marks >= 0, (counts.sum(axis=1) - counts[rows, marked]) / np.maximum(rest, 1.0), 0.0)
    entropy = float(-(p_class[p_class > 0] * np.log2(p_class[p_class > 0])).sum())
    return Strengths(
        counts=counts,
        strength=strength,
        marks=marks,
        share=share,
        others=others,
        lift=np.where(marks >= 0, lift[rows, marked], 0.0),
        mutual_information=float(strength.sum()),
        label_entropy=entropy,
    )


def ranking(strengths: Strengths) -> np.ndarray:
    """Attribute indices from the strongest down: strength, then share (both descending), then vocabulary order;
    attributes that no image carries, or of strength 0, are left out."""
    keep = np.flatnonzero((strengths.marks >= 0) & (strengths.strength > 0))
    order = np.lexsort((keep, -strengths.share[keep], -strengths.strength[keep]))
    return keep[order]


@dataclass(frozen=True)
class GroupMatch:
    """A known group that lines up with an attribute: its name, its image count and the share of its images whose
    best description is the attribute."""

    group: str
    images: int
    share: float


def group_alignment(
    best: np.ndarray,
    groups: np.ndarray,
    group_names: Sequence[str],
    attributes: Sequence[int],
    min_share: float = GROUP_MIN_SHARE,
) -> dict[int, list[GroupMatch]]:
    """For each attribute index in ``attributes``, the known groups at least ``min_share`` of whose images carry it
    (best description, ``best [N]``; ``groups [N]`` index ``group_names``), the most images carrying it first (then
    the higher share, then the group order). An attribute with no such group maps to ``[]``: it lines up with no known
    group (a shortcut the groups do not name, or no shortcut)."""
    best = np.asarray(best, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    present = np.unique(groups)
    sizes = {int(g): int(np.count_nonzero(groups == g)) for g in present}
    out: dict[int, list[GroupMatch]] = {}
    for a in attributes:
        matches = []
        for g in present:
            carried = int(np.count_nonzero((groups == g) & (best == a)))
            share = carried / sizes[int(g)]
            if share >= min_share:
                name = str(group_names[g]) if 0 <= g < len(group_names) else str(int(g))
                matches.append((-carried, -share, int(g), GroupMatch(name, sizes[int(g)], share)))
        out[int(a)] = [m[-1] for m in sorted(matches, key=lambda m: m[:3])]
    return out


# ---------------------------------------------------------------------------------------------------------
# the whole discovery


@dataclass(frozen=True)
class Finding:
    """One ranked attribute: its template, vocabulary category, the class it marks, strength (bits), the share of
    that class's images carrying it, the share of the other classes' images carrying it, the lift and, on a split
    with groups, the known groups it lines up with."""

    rank: int
    template: str
    category: str
    classname: str
    strength: float
    share: float
    others: float
    lift: float
    images: int
    groups: list[GroupMatch] | None = None

    @property
    def phrase(self) -> str:
        """The template as a phrase: ``{} on red stripes.`` -> ``on red stripes``; ``a blurry photo of {}.`` ->
        ``a blurry photo of …``."""
        text = self.template.rstrip(".")
        return text[3:] if text.startswith("{} ") else text.replace("{}", "…")


@dataclass
class Discovery:
    """What :func:`discover` found: the ranked findings (all attributes of strength > 0) and the context."""

    findings: list[Finding]
    dataset: str
    split: str
    model: str
    classnames: list[str]
    num_images: int
    num_skipped: int
    vocabulary_size: int
    caption_template: str
    mutual_information: float
    label_entropy: float
    has_groups: bool
    timing: dict[str, float] = field(default_factory=dict)  # seconds: images, text, statistic, total

    def top(self, k: int) -> list[Finding]:
        """The ``k`` strongest findings."""
        return self.findings[:k]

    @property
    def images_per_second(self) -> float | None:
        """Images through the image tower per second (None when the features came from the cache)."""
        seconds = self.timing.get("images", 0.0)
        return None if self.timing.get("images_cached") or seconds <= 0 else self.num_images / seconds


def pool_text(discovery: Discovery, top: int = DEFAULT_TOP) -> str:
    """The pool file of the ``top`` strongest findings: a comment header (source, how to use it), then one
    template per line, each with a comment naming the class it marks and its strength. Loads with
    :func:`starft_cli.prompts.load_pool`."""
    header = [
        f"# Spurious pool discovered by `starft pool discover` on {discovery.dataset} ({discovery.split} split,",
        f"# {discovery.num_images} images) with {discovery.model}: the {min(top, len(discovery.findings))} attributes "
        "that most mark a class.",
        "# Use it with `starft finetune --pool THIS_FILE`. {} is the caption without its final period.",
    ]
    lines = [
        f"{f.template}\n# ^ marks {f.classname}: {f.strength:.4f} bits, {100 * f.share:.1f}% of its images"
        for f in discovery.top(top)
    ]
    return "\n".join(header) + "\n" + "\n".join(lines) + "\n"


def discover(
    model: str | ModelRef | LoadedModel,
    data: str | Any,
    data_root: str | Path | None = None,
    split: str | None = None,
    *,
    vocab_files: Sequence[str | Path] = (),
    shipped_vocab: bool = True,
    caption_template: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    classnames_file: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> Discovery:
    """Rank the vocabulary's attributes by how strongly they mark a class of ``data``'s ``split`` under ``model``
    (see the module docstring for the statistic). ``data``: a dataset reference (registered name, ``folder:PATH``,
    ``csv:PATH``) or a loaded ImageDataset. On a split with groups, each finding lists the groups it lines up
    with (:func:`group_alignment`).

    Raises :class:`~starft_cli.errors.TemplateError` for a bad vocabulary, :class:`~starft_cli.errors.DataError`
    for a split without readable images or with one class, and whatever loading the model and data raises.
    """
    import torch

    from starft_cli.eval.features import compute_features
    from starft_cli.models import ModelRef, load
    from starft_cli.probe import check_caption_template
    from starft_cli.train.bank import cached_bank
    from starft_cli.train.config import DEFAULT_CAPTION

    started = time.perf_counter()
    vocabulary = load_vocabulary(vocab_files, shipped=shipped_vocab)
    caption = check_caption_template(caption_template or DEFAULT_CAPTION)
    if isinstance(data, str):
        from starft_cli.data.registry import load_dataset
        from starft_cli.probe import _default_split

        dataset = load_dataset(data, data_root, split, classnames_file=classnames_file)
        data_name = data
        split_name = split or ("all" if data.startswith(("folder:", "csv:")) else _default_split(data))
    else:
        dataset, data_name, split_name = data, data.name, split or getattr(data, "split", None) or "?"
    if len(dataset) == 0:
        raise DataError(f"{data_name}: the '{split_name}' split holds no images")
    present = sorted(set(dataset.labels))
    if len(present) < 2:
        raise DataError(
            f"{data_name}: the '{split_name}' split holds one class ({dataset.classnames[present[0]]}); an attribute "
            "can only mark a class against others",
            "Use a split with images of at least two classes",
        )
    loaded = load(model, device=device) if isinstance(model, str | ModelRef) else model
    timing: dict[str, float] = {}
    tick = time.perf_counter()
    report = None if progress is None else (lambda done, total: progress("images", done, total))
    feats = compute_features(
        loaded, dataset, device=device, batch_size=batch_size, workers=workers, strict=strict, use_cache=use_cache,
        progress=report,
    )  # fmt: skip
    timing["images"] = time.perf_counter() - tick
    timing["images_cached"] = float(feats.from_cache)
    tick = time.perf_counter()
    classnames = [dataset.classnames[c] for c in present]
    bank = cached_bank(
        loaded.model, loaded.tokenizer, loaded.fingerprint, classnames, caption, vocabulary.templates,
        torch.device(device), use_cache,
    )  # fmt: skip
    timing["text"] = time.perf_counter() - tick
    tick = time.perf_counter()
    valid = np.flatnonzero(feats.valid.numpy())
    if len(valid) == 0:
        raise DataError(f"{data_name}: no image of the '{split_name}' split is readable", "Check the image files")
    position = np.full(max(present) + 1, -1, dtype=np.int64)
    position[present] = np.arange(len(present))
    labels = position[np.asarray(dataset.labels)[valid]]
    shifts = class_free_shifts(bank.spurious.float().cpu(), bank.captions.float().cpu())
    best = best_descriptions(feats.features[torch.as_tensor(valid)], labels, shifts)
    stats = attribute_strengths(best, labels, len(vocabulary), len(present))
    order = ranking(stats)
    aligned = None
    if dataset.groups is not None:
        groups = np.asarray(dataset.groups)[valid]
        aligned = group_alignment(best, groups, list(dataset.group_names or []), order.tolist())
    findings = [
        Finding(
            rank=rank,
            template=vocabulary.templates[a],
            category=vocabulary.categories[a],
            classname=classnames[int(stats.marks[a])],
            strength=float(stats.strength[a]),
            share=float(stats.share[a]),
            others=float(stats.others[a]),
            lift=float(stats.lift[a]),
            images=int(stats.counts[a].sum()),
            groups=None if aligned is None else aligned[int(a)],
        )
        for rank, a in enumerate(order.tolist(), start=1)
    ]
    timing["statistic"] = time.perf_counter() - tick
    timing["total"] = time.perf_counter() - started
    logger.info("discovery on %d images x %d attributes: %.1f s", len(valid), len(vocabulary), timing["total"])
    return Discovery(
        findings=findings,
        dataset=data_name,
        split=split_name,
        model=loaded.ref.raw,
        classnames=classnames,
        num_images=len(valid),
        num_skipped=len(dataset) - len(valid),
        vocabulary_size=len(vocabulary),
        caption_template=caption,
        mutual_information=stats.mutual_information,
        label_entropy=stats.label_entropy,
        has_groups=aligned is not None,
        timing=timing,
    )
