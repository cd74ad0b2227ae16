"""``spurious-digits``: the embedded spurious-correlation benchmark behind ``starft demo``.

Real handwritten digits (the UCI optical-recognition digits that scikit-learn ships, 8x8 grey levels 0..16)
are upscaled and composited on procedurally drawn backgrounds. The object (the digit) is the core feature;
the background (a colour and a pattern) is the spurious one:

- ``pretrain``: a balanced corpus (every source digit on every background) with captions naming the digit and,
  mostly, the background: what the demo's zero-shot model is pre-trained on;
- ``train``: the biased fine-tuning split: 95% of the images of digit ``k`` lie on background ``k``
  (Waterbirds-style), the other 5% are spread evenly over the other backgrounds;
- ``val``: in-distribution validation with the same bias;
- ``test``: balanced: every test digit on every background; groups = digit x background.

No source digit appears in two splits. The data are generated on first use (a few seconds), deterministic for
a seed (same seed, same bytes), into a folder that is renamed into place only when complete; a
``manifest.json`` holds each file's sha256, so a damaged copy is detected and generated again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from starft_cli.data.base import ArrayImageDataset, CheckReport
from starft_cli.data.checks import count_groups, count_into
from starft_cli.data.registry import Builder, register_dataset
from starft_cli.errors import DataError
from starft_cli.paths import atomic_dir, sha256_file

logger = logging.getLogger(__name__)

NAME = "spurious-digits"
GENERATOR_VERSION = 1
DEFAULT_SEED = 0
IMAGE_SIZE = 32
CLASSNAMES = ("zero", "one", "two", "three", "four")
# Background k is the majority background of digit k in the biased splits.
BACKGROUNDS = ("red stripes", "green dots", "blue checks", "yellow waves", "purple grid")
_COLOURS = ((205, 45, 45), (40, 165, 70), (45, 80, 210), (225, 200, 40), (145, 55, 175))
SPLITS = ("pretrain", "train", "val", "test")
# Source digits per class and split (the scarcest class, digit 2, has 177), and copies of each source.
SOURCES = {"pretrain": 100, "train": 40, "val": 10, "test": 27}
COPIES = {"pretrain": 1, "train": 4, "val": 4, "test": 2}  # pretrain/test: per background
MAJORITY = 0.95
CAPTIONS = (
    "a photo of a {c} on {b}.",
    "a photo of the digit {c} on {b}.",
    "the number {c} on {b}.",
    "a {c} on {b}.",
    "a photo of a {c}.",
    "a photo of the digit {c}.",
)
GROUP_NAMES = tuple(f"{c} on {b}" for c in CLASSNAMES for b in BACKGROUNDS)


def group_of(label: int, background: int) -> int:
    """The test group index of a (digit, background) pair: ``label * len(BACKGROUNDS) + background``."""
    return label * len(BACKGROUNDS) + background


# ---------------------------------------------------------------------------------------------------------
# drawing


def _background(kind: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A ``float32 [size, size, 3]`` background in 0..255: background ``kind``'s pattern in two tones of its
    colour, with a random phase, period and colour jitter."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(5.0, 8.0)
    if kind == 0:  # stripes at a random angle
        angle = rng.uniform(0, np.pi)
        mask = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase) > 0
    elif kind == 1:  # dots on a jittered lattice
        ox, oy = rng.uniform(0, period, size=2)
        dx = (x + ox) % period - period / 2
        dy = (y + oy) % period - period / 2
        mask = dx * dx + dy * dy < (period * 0.3) ** 2
    elif kind == 2:  # checks
        cell = max(2, int(period * 0.6))
        ox, oy = rng.integers(0, cell, size=2)
        mask = (((x + ox) // cell + (y + oy) // cell) % 2) == 0
    elif kind == 3:  # waves
        mask = np.sin(2 * np.pi * y / period + 2.0 * np.sin(2 * np.pi * x / (2 * period) + phase)) > 0
    else:  # grid lines
        ox, oy = rng.integers(0, int(period), size=2)
        mask = (((x + ox) % int(period)) < 1.5) | (((y + oy) % int(period)) < 1.5)
    base = np.clip(np.asarray(_COLOURS[kind], dtype=np.float32) + rng.normal(0, 10, size=3), 0, 255)
    dark = base * 0.55
    image = np.where(mask[..., None], base, dark)
    return image + rng.normal(0, 6, size=image.shape).astype(np.float32)


def _digit_alpha(digit: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A ``float32 [size, size]`` opacity map: the 8x8 digit (levels 0..16) upscaled bicubically to a random
    height of 18-24 px and placed at a random position."""
    from PIL import Image

    side = int(rng.integers(18, 25))
    glyph = Image.fromarray((digit / 16.0 * 255).astype(np.uint8), mode="L").resize((side, side), Image.BICUBIC)
    alpha = np.zeros((size, size), dtype=np.float32)
    top, left = rng.integers(0, size - side + 1, size=2)
    alpha[top : top + side, left : left + side] = np.asarray(glyph, dtype=np.float32) / 255.0
    return np.clip((alpha - 0.12) * 1.6, 0, 1)  # no faint halo: the glyph's box stays invisible


def compose(digit: np.ndarray, background: int, rng: np.random.Generator) -> np.ndarray:
    """One ``uint8 [32, 32, 3]`` image: a white digit with a dark rim on background ``background``."""
    from PIL import Image, ImageFilter

    image = _background(background, rng)
    alpha = _digit_alpha(digit, rng)
    rim = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3)), dtype=np.float32)
    rim = rim / 255.0
    image = image * (1 - rim[..., None]) + 20.0 * rim[..., None]
    image = image * (1 - alpha[..., None]) + 245.0 * alpha[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# generation


@dataclass
class Split:
    """One split in memory: images ``uint8 [N, 32, 32, 3]``, labels, backgrounds, source digit indices (into
    scikit-learn's 1797 digits) and captions."""

    images: np.ndarray
    labels: np.ndarray
    backgrounds: np.ndarray
    sources: np.ndarray
    captions: list[str]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError(
            "spurious-digits needs scikit-learn (it ships the handwritten digits)", "pip install scikit-learn"
        ) from None
    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def _source_split(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint source-digit indices per split (``SOURCES[split]`` per class, in a seeded random order)."""
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(len(CLASSNAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for split in SPLITS:
            out[split].extend(int(i) for i in idx[start : start + SOURCES[split]])
            start += SOURCES[split]
    return {s: np.asarray(v, dtype=np.int64) for s, v in out.items()}


def _biased_backgrounds(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Backgrounds for ``n`` images of class ``label``: exactly ``round(n * (1 - MAJORITY))`` off the majority
    background, spread evenly over the others, in a random order."""
    minority = round(n * (1 - MAJORITY))
    others = [b for b in range(len(BACKGROUNDS)) if b != label]
    chosen = [others[i % len(others)] for i in range(minority)] + [label] * (n - minority)
    return rng.permutation(np.asarray(chosen, dtype=np.int64))


def generate(seed: int = DEFAULT_SEED) -> dict[str, Split]:
    """Build every split in memory (deterministic for ``seed``)."""
    images, labels = _load_digits()
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    sources = _source_split(labels, rng)
    out: dict[str, Split] = {}
    for split in SPLITS:
        plan: list[tuple[int, int]] = []  # (source index, background)
        for c in range(len(CLASSNAMES)):
            mine = [int(i) for i in sources[split] if labels[i] == c]
            if split in ("pretrain", "test"):
                plan.extend((i, b) for i in mine for b in range(len(BACKGROUNDS)) for _ in range(COPIES[split]))
            else:
                copies = [i for i in mine for _ in range(COPIES[split])]
                plan.extend(zip(copies, _biased_backgrounds(len(copies), c, rng).tolist(), strict=True))
        pixels = np.stack([compose(images[i], b, rng) for i, b in plan])
        split_labels = np.asarray([labels[i] for i, _ in plan], dtype=np.int64)
        backgrounds = np.asarray([b for _, b in plan], dtype=np.int64)
        if split == "pretrain":
            picks = rng.integers(0, len(CAPTIONS), size=len(plan))
            captions = [
                CAPTIONS[k].format(c=CLASSNAMES[y], b=BACKGROUNDS[b])
                for k, y, b in zip(picks.tolist(), split_labels.tolist(), backgrounds.tolist(), strict=True)
            ]
        else:
            captions = [f"a photo of a {CLASSNAMES[y]}." for y in split_labels.tolist()]
        out[split] = Split(pixels, split_labels, backgrounds, np.asarray([i for i, _ in plan]), captions)
    return out


def write(root: Path, seed: int = DEFAULT_SEED) -> Path:
    """Generate the benchmark into ``root`` atomically: built in a temporary folder beside it, then renamed.

    Files: ``<split>.safetensors`` (``images`` uint8 [N, 32, 32, 3], ``labels``, ``backgrounds``, ``sources``
    int64 [N]; captions in the metadata) and ``manifest.json`` (seed, version, classes, backgrounds, sha256 of
    each split file). A damaged ``root`` is replaced.
    """
    import torch
    from safetensors.torch import save_file

    splits = generate(seed)
    with atomic_dir(root) as tmp:
        hashes = {}
        for name, split in splits.items():
            tensors = {
                "images": torch.from_numpy(np.ascontiguousarray(split.images)),
                "labels": torch.from_numpy(split.labels),
                "backgrounds": torch.from_numpy(split.backgrounds),
                "sources": torch.from_numpy(split.sources.astype(np.int64)),
            }
            path = tmp / f"{name}.safetensors"
            save_file(tensors, str(path), metadata={"captions": json.dumps(split.captions)})
            hashes[name] = sha256_file(path)
        manifest = {
            "dataset": NAME,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "classnames": list(CLASSNAMES),
            "backgrounds": list(BACKGROUNDS),
            "majority": MAJORITY,
            "sha256": hashes,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root


def verify(root: Path) -> list[str]:
    """Problems with the generated copy in ``root`` (empty when every file matches the manifest)."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return [f"missing {manifest_path}"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        hashes = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{manifest_path} is damaged ({exc})"]
    problems = []
    if manifest.get("generator_version") != GENERATOR_VERSION:
        problems.append(f"{root} was made by generator version {manifest.get('generator_version')}")
    for split in SPLITS:
        path = root / f"{split}.safetensors"
        if not path.is_file():
            problems.append(f"missing {path}")
        elif hashes.get(split) != sha256_file(path):
            problems.append(f"{path} does not match its sha256 in manifest.json (damaged)")
    return problems


def ensure(root: Path, seed: int = DEFAULT_SEED) -> Path:
    """``root`` holding a verified copy: generated on first use, generated again when damaged."""
    from starft_cli.paths import build_lock

    problems = verify(root) if root.exists() else ["absent"]
    if not problems:
        return root
    with build_lock(root, on_wait=lambda p: logger.info("another starft process is generating %s: waiting", p)):
        problems = verify(root) if root.exists() else ["absent"]  # generated while this process waited?
        if not problems:
            return root
        if root.exists():
            logger.warning("%s: %s; generating it again", NAME, problems[0])
        else:
            logger.info("generating %s into %s", NAME, root)
        write(root, seed)
    return root


def default_root() -> Path:
    """Where the benchmark lives when no ``--data-root`` is given: ``<cache>/datasets/spurious-digits``."""
    from starft_cli.paths import cache_dir

    return cache_dir("datasets") / NAME


def read_split(root: Path, split: str) -> tuple[dict[str, Any], list[str]]:
    """The tensors and captions of one split file."""
    from safetensors import safe_open

    path = root / f"{split}.safetensors"
    try:
        with safe_open(str(path), framework="numpy") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
            captions = json.loads((handle.metadata() or {})["captions"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path} ({exc})", f"Delete {root} and it is generated again") from None
    return tensors, captions


@register_dataset(
    NAME,
    title="Spurious digits (handwritten digits on class-correlated backgrounds; embedded, generated)",
    folder=NAME,
    layout=f"{NAME}/manifest.json and <split>.safetensors for pretrain, train, val, test; generated on first "
    "use into the cache (or under --data-root by `starft data download spurious-digits`)",
    source="generated locally from scikit-learn's bundled UCI handwritten digits (no download)",
    splits=SPLITS,
    default_split="test",
    templates="digits",
    generated=True,
    download=lambda data_root: ensure(data_root / NAME),  # "downloading" it generates it there
)
class SpuriousDigits(Builder):
    """The registered builder: ``build(root, split)`` reads a split, ``check(root)`` verifies the copy."""

    def default_root(self) -> Path:
        return default_root()

    def ensure(self, root: Path) -> None:
        ensure(root)

    def build(self, root: Path, split: str) -> ArrayImageDataset:
        tensors, captions = read_split(root, split)
        labels = tensors["labels"].tolist()
        backgrounds = tensors["backgrounds"].tolist()
        groups = [group_of(y, b) for y, b in zip(labels, backgrounds, strict=True)]
        return self.dataset(
            ArrayImageDataset,
            classnames=CLASSNAMES,
            labels=labels,
            images=tensors["images"],
            sources=[root / f"{split}.safetensors"],
            groups=groups,
            group_names=GROUP_NAMES,
            captions=captions if split == "pretrain" else None,
        )

    def check(self, root: Path) -> CheckReport:
        report = self.report(root)
        report.problems.extend(verify(root))
        if report.problems:
            report.notes.append("any use of the dataset (or `starft data download spurious-digits`) generates it")
            return report
        for split in self.info.splits:
            tensors, _ = read_split(root, split)
            labels = tensors["labels"].tolist()
            backgrounds = tensors["backgrounds"].tolist()
            count_into(report, split, labels, CLASSNAMES)
            on_majority = sum(y == b for y, b in zip(labels, backgrounds, strict=True))
            report.counts[f"{split} on the class's own background (%)"] = round(100 * on_majority / len(labels), 1)
            if split == "test":
                groups = [group_of(y, b) for y, b in zip(labels, backgrounds, strict=True)]
                count_groups(report, split, groups, GROUP_NAMES)
        return report
