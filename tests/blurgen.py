"""A second synthetic shortcut, built differently from spurious-digits: the nuisance is image quality (blur), not
the background, and only one class carries it.

Handwritten digits 0-2 (scikit-learn's UCI digits) are drawn in white on a plain grey, noisy background, either
sharp or blurred (a Gaussian blur of radius 1.6 px), written as PNGs with a ``csv:`` table (filepath, caption, label,
group):

- ``pretrain.csv``: balanced, every source digit sharp and blurred; captions name the digit and, mostly, the
  quality (``a blurry photo of a one.``, ``a sharp photo of a one.``): a zero-shot model pre-trained on it "the
  demo's way" knows the words;
- ``train.csv``: biased: 90% of the ones are blurred, one zero and one two are; groups = digit x quality.

The planted shortcut is "a blurry photo of {}." marking "one".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASSES = ("zero", "one", "two")
QUALITIES = ("sharp", "blurry")
PLANTED = ("a blurry photo of {}.", "one")
SIZE = 32


def draw(digit: np.ndarray, quality: str, rng: np.random.Generator) -> np.ndarray:
    """A ``uint8 [32, 32, 3]`` image: the 8x8 digit upscaled to 20-26 px in white on grey noise, blurred when
    ``quality`` is ``blurry``."""
    from PIL import Image, ImageFilter

    side = int(rng.integers(20, 27))
    glyph = Image.fromarray((digit / 16.0 * 255).astype(np.uint8), mode="L").resize((side, side), Image.BICUBIC)
    alpha = np.zeros((SIZE, SIZE), dtype=np.float32)
    top, left = rng.integers(0, SIZE - side + 1, size=2)
    alpha[top : top + side, left : left + side] = np.asarray(glyph, dtype=np.float32) / 255.0
    alpha = np.clip((alpha - 0.12) * 1.6, 0, 1)[..., None]
    grey = rng.uniform(90, 130)
    background = grey + rng.normal(0, 8, size=(SIZE, SIZE, 3))
    image = np.clip(np.rint(background * (1 - alpha) + 240.0 * alpha), 0, 255).astype(np.uint8)
    if quality == "blurry":
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.6)))
    return image


def _train_qualities(label: int, n: int) -> list[str]:
    blurry = round(0.9 * n) if label == 1 else 1  # the shortcut: 90% of the ones are blurry
    return ["blurry"] * blurry + ["sharp"] * (n - blurry)


def write(root: Path, pretrain_sources: int = 90, train_per_class: int = 40, seed: int = 0) -> Path:
    """Generate both splits under ``root`` (deterministic for ``seed``); returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rows: dict[str, list[dict[str, str]]] = {"pretrain": [], "train": []}
    for label in range(len(CLASSES)):
        sources = rng.permutation(np.flatnonzero(targets == label))
        plan = [("pretrain", int(i), q) for i in sources[:pretrain_sources] for q in QUALITIES]
        train = sources[pretrain_sources : pretrain_sources + train_per_class]
        plan += [("train", int(i), q) for i, q in zip(train, _train_qualities(label, len(train)), strict=True)]
        for split, source, quality in plan:
            name = f"img/{split}-{label}-{source}-{quality}.png"
            Image.fromarray(draw(images[source], quality, rng)).save(root / name)
            if split == "pretrain" and rng.random() < 0.3:
                caption = f"a photo of a {CLASSES[label]}."
            else:
                caption = f"a {quality} photo of a {CLASSES[label]}."
            group = f"{quality} {CLASSES[label]}"
            rows[split].append({"filepath": name, "caption": caption, "label": CLASSES[label], "group": group})
    for split, table in rows.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return root


def pretrain(root: Path, out: Path, epochs: int = 30) -> Path:
    """A zero-shot model for the ink data, pre-trained the demo's way (CLIP pre-training: the contrastive loss
    alone, from random weights of the ``starft-demo`` architecture, lr 1e-3, batch 128); returns its final
    checkpoint folder."""
    from starft_cli.runs import LAST, RunLayout
    from starft_cli.train import build_config, finetune

    settings = {
        "backbone": "starft-demo:none",
        "data": f"csv:{root / 'pretrain.csv'}",
        "method": "flyp",
        "epochs": epochs,
        "lr": 1e-3,
        "wd": 0.1,
        "batch_size": 128,
        "warmup": 20,
        "seed": 0,
        "workers": 0,
        "device": "cpu",
        "out": str(out),
    }
    run = finetune(build_config(settings))
    return RunLayout(run).checkpoint(LAST)
