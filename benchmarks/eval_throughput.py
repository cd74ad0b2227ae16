"""Zero-shot evaluation throughput: starft's engine against a plain open_clip + ImageFolder + DataLoader loop.

Both evaluate the same model on the same generated class-per-folder dataset of JPEGs with the same batch size
and DataLoader workers, and compute the same top-1 accuracy. Four figures, medians over ``--runs`` runs:

* plain: open_clip's ``build_zero_shot_classifier`` head, ``torchvision.datasets.ImageFolder`` with the model's
  preprocessing, a ``DataLoader`` loop under ``torch.no_grad``;
* ours, cold, exact: ``starft_cli.eval.evaluate`` with an empty cache (layout check, features, head, metrics), every
  image decoded in full (the default: the standard pipeline's pixels);
* ours, cold, fast: the same with ``fast_decode`` (``starft eval --fast-decode``: large JPEGs decoded at a reduced
  DCT scale, at least twice the model's input size);
* ours, warm: the exact call again, features and head from the cache.

Then the agreement of the fast decode with the exact one: the number of top-1 predictions that change, per 10,000
images (on these generated images and this model; ``--model`` takes a trained model too).

Usage: python benchmarks/eval_throughput.py [--images-per-class 40] [--classes 10] [--size 512x384]
       [--model starft-tiny:none] [--batch-size 64] [--workers 2] [--runs 5] [--device cpu]
       python benchmarks/eval_throughput.py --make-train-set DIR [--seed 1]   # a training set of the same classes

A random-init model predicts nearly one class for everything, so its count of changed predictions says little; the
README's figure is for starft-tiny fine-tuned (FLYP, 80 steps) on a training set made with --make-train-set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_dataset(root: Path, classes: int, per_class: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``classes`` x ``per_class`` JPEGs; the class colours are fixed, ``seed`` draws the noise (another seed gives
    other images of the same classes: e.g. a training set for a model to measure ``--fast-decode`` with)."""
    import numpy as np
    from PIL import Image

    colours = np.random.RandomState(0).randint(0, 255, size=(classes, 3))
    rng = np.random.RandomState(1000 + seed)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = colours[c]
        for i in range(per_class):
            w, h = size
            # smooth gradients plus noise: compresses like a photo, not like flat colour
            yy, xx = np.mgrid[0:h, 0:w]
            base = colour + 60 * np.sin(xx[..., None] / (7 + i % 5) + c) + 40 * np.cos(yy[..., None] / (9 + c))
            pixels = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def plain_loop(loaded, root: Path, batch_size: int, workers: int, device) -> float:
    """The straightforward way: open_clip head, ImageFolder, DataLoader, no cache."""
    import open_clip
    import torch
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=loaded.preprocess)
    classnames = [c.replace("_", " ") for c in dataset.classes]
    head = open_clip.build_zero_shot_classifier(
        loaded.model, loaded.tokenizer, classnames, ["a photo of a {}."], device=device
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            features = loaded.model.encode_image(images.to(device), normalize=True)
            correct += int(((features @ head).argmax(dim=-1).cpu() == labels).sum())
    return correct / len(dataset)


def ours(loaded, root: Path, batch_size: int, workers: int, device, fast_decode: bool = False) -> float:
    from starft_cli.eval import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    suite = Suite("bench", (SuiteEntry(f"folder:{root}", ("top1",), templates="single"),))
    result = evaluate(
        [loaded], suite, None, device=device, batch_size=batch_size, workers=workers, fast_decode=fast_decode
    )
    return result.value(f"folder:{root}", "top1")


def make_shards(root: Path, out: Path, per_shard: int = 100) -> Path:
    """The same JPEG files as webdataset shards (``out/0.tar ...``, ``.jpg`` + ``.cls``) with a classnames.txt, in
    the folder layout's order: the ``wds:`` case reads exactly the bytes the folder case reads."""
    import webdataset as wds

    from starft_cli.data.registry import load_dataset

    ds = load_dataset(f"folder:{root}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "classnames.txt").write_text("\n".join(ds.classnames) + "\n")
    for number, start in enumerate(range(0, len(ds), per_shard)):
        with wds.TarWriter(str(out / f"{number}.tar")) as sink:
            for i in range(start, min(start + per_shard, len(ds))):
                sink.write({"__key__": f"s{i:07d}", "jpg": ds.paths[i].read_bytes(), "cls": str(ds.labels[i]).encode()})
    return out


def ours_wds(loaded, shards: Path, batch_size: int, workers: int, device) -> float:
    from starft_cli.eval import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    suite = Suite("bench", (SuiteEntry(f"wds:{shards}", ("top1",), templates="single"),))
    result = evaluate([loaded], suite, None, device=device, batch_size=batch_size, workers=workers)
    return result.value(f"wds:{shards}", "top1")


def changed_predictions(loaded, root: Path, batch_size: int, workers: int, device) -> tuple[int, float]:
    """How many top-1 predictions differ between full and reduced-scale decoding (features not cached), and the
    smallest cosine similarity between an image's two feature vectors."""
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from starft_cli.prompts import load_templates
    from starft_cli.zeroshot import zero_shot_head

    ds = load_dataset(f"folder:{root}")
    head = zero_shot_head(loaded.model, loaded.tokenizer, ds.classnames, load_templates("single"), device=device)
    preds, feats = [], []
    for fast in (False, True):
        out = compute_features(
            loaded, ds, device=device, batch_size=batch_size, workers=workers, use_cache=False, fast_decode=fast
        )
        feats.append(out.features)
        preds.append((out.features.to(head.device) @ head.T).argmax(dim=-1).cpu())
    return int((preds[0] != preds[1]).sum()), float((feats[0] * feats[1]).sum(dim=-1).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="starft-tiny:none")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--size", default="512x384", help="JPEG width x height")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--make-train-set", type=Path, help="Only write a dataset of the same classes here, and stop.")
    parser.add_argument("--seed", type=int, default=1, help="Noise seed of --make-train-set (the benchmark uses 0).")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.make_train_set is not None:
        make_dataset(args.make_train_set, args.classes, args.images_per_class, (width, height), seed=args.seed)
        print(f"wrote {args.classes} x {args.images_per_class} JPEGs to {args.make_train_set}")
        return

    import torch

    from starft_cli.device import resolve_device
    from starft_cli.models import load

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="starft-bench-"))
    root = make_dataset(work / "data", args.classes, args.images_per_class, (width, height))
    n = args.classes * args.images_per_class
    loaded = load(args.model, device=device)
    plain_loop(loaded, root, args.batch_size, args.workers, device)  # warm the OS file cache and libraries

    shards = make_shards(root, work / "shards")
    times: dict[str, list[float]] = {"plain": [], "cold": [], "fast": [], "warm": [], "wds": [], "wds-index": []}
    accs = {}
    for run in range(args.runs):
        for key in ("plain", "cold", "fast", "warm", "wds", "wds-index"):
            # an empty feature and head cache for each cold measurement; warm reads the exact cold run's cache
            os.environ["STARFT_HOME"] = str(work / f"home{run}-{'cold' if key == 'warm' else key}")
            if key == "wds":  # the shard index as `starft data download` leaves it (built once, cached)
                from starft_cli.data.shards import _CACHE, build_index, expand_shards

                build_index(expand_shards(str(shards)))
                _CACHE.items.clear()  # but no image bytes in memory: they are read from the shards
            start = time.perf_counter()
            if key == "plain":
                accs[key] = plain_loop(loaded, root, args.batch_size, args.workers, device)
            elif key.startswith("wds"):  # the same JPEGs as webdataset shards, cold feature cache
                accs[key] = ours_wds(loaded, shards, args.batch_size, args.workers, device)
            else:
                accs[key] = ours(loaded, root, args.batch_size, args.workers, device, fast_decode=key == "fast")
            times[key].append(time.perf_counter() - start)
    os.environ["STARFT_HOME"] = str(work / "home-agreement")
    changed, cosine = changed_predictions(loaded, root, args.batch_size, args.workers, device)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{n} JPEGs {width}x{height}, {args.classes} classes, model {args.model}, device {device}, "
        f"batch {args.batch_size}, workers {args.workers}, medians of {args.runs} runs"
    )
    for key, label in (
        ("plain", "plain open_clip+ImageFolder+DataLoader"),
        ("cold", "starft eval, cold cache (exact decode)"),
        ("fast", "starft eval --fast-decode, cold cache"),
        ("warm", "starft eval, warm feature cache"),
        ("wds", "starft eval, wds: shards, cold cache"),
        ("wds-index", "  the same, shard index built in the run"),
    ):
        print(f"  {label:40s} {med[key]:8.3f} s  {n / med[key]:9.1f} images/s")
    print(
        f"  cold speed-up vs plain: exact {med['plain'] / med['cold']:.2f}x, fast {med['plain'] / med['fast']:.2f}x"
        f"   warm speed-up vs plain: {med['plain'] / med['warm']:.2f}x"
    )
    print(
        f"  wds: shards vs folder (cold, exact decode): {med['cold'] / med['wds']:.2f}x the folder's speed "
        f"({med['cold'] / med['wds-index']:.2f}x when the shard index is built in the run)"
    )
    print(
        f"  top-1 plain {accs['plain']:.4f} / exact {accs['cold']:.4f} / fast {accs['fast']:.4f}   "
        f"fast vs exact: {changed} of {n} predictions changed ({changed / n * 10_000:.0f} per 10k images), "
        f"feature cosine >= {cosine:.4f}"
    )


if __name__ == "__main__":
    main()
