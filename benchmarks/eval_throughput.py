"""Zero-shot evaluation throughput: starft's engine against a plain open_clip + ImageFolder + DataLoader loop.

Both evaluate the same model on the same generated class-per-folder dataset of JPEGs with the same batch size
and DataLoader workers, and compute the same top-1 accuracy. Three figures, medians over ``--runs`` runs:

* plain: open_clip's ``build_zero_shot_classifier`` head, ``torchvision.datasets.ImageFolder`` with the model's
  preprocessing, a ``DataLoader`` loop under ``torch.no_grad``;
* ours, cold: ``starft_cli.eval.evaluate`` with an empty cache (layout check, features, head, metrics);
* ours, warm: the same call again, features and head from the cache.

Usage: python benchmarks/eval_throughput.py [--images-per-class 40] [--classes 10] [--size 512x384]
       [--model starft-tiny:none] [--batch-size 64] [--workers 2] [--runs 5] [--device cpu]
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


def make_dataset(root: Path, classes: int, per_class: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.randint(0, 255, size=3)
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


def ours(loaded, root: Path, batch_size: int, workers: int, device) -> float:
    from starft_cli.eval import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    suite = Suite("bench", (SuiteEntry(f"folder:{root}", ("top1",), templates="single"),))
    frame = evaluate([loaded], suite, None, device=device, batch_size=batch_size, workers=workers)
    return float(frame.loc[frame["metric"] == "top1", "value"].iloc[0])


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
    args = parser.parse_args()

    import torch

    from starft_cli.device import resolve_device
    from starft_cli.models import load

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    device = resolve_device(args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="starft-bench-"))
    root = make_dataset(work / "data", args.classes, args.images_per_class, (width, height))
    n = args.classes * args.images_per_class
    loaded = load(args.model, device=device)
    plain_loop(loaded, root, args.batch_size, args.workers, device)  # warm the OS file cache and libraries

    plain_t, cold_t, warm_t = [], [], []
    accs = {}
    for run in range(args.runs):
        os.environ["STARFT_HOME"] = str(work / f"home{run}")  # an empty feature and head cache per run
        start = time.perf_counter()
        accs["plain"] = plain_loop(loaded, root, args.batch_size, args.workers, device)
        plain_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        accs["ours"] = ours(loaded, root, args.batch_size, args.workers, device)
        cold_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours(loaded, root, args.batch_size, args.workers, device)
        warm_t.append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in (("plain", plain_t), ("cold", cold_t), ("warm", warm_t))}
    print(
        f"{n} JPEGs {width}x{height}, {args.classes} classes, model {args.model}, device {device}, "
        f"batch {args.batch_size}, workers {args.workers}, medians of {args.runs} runs"
    )
    for key, label in (
        ("plain", "plain open_clip+ImageFolder+DataLoader"),
        ("cold", "starft eval, cold cache"),
        ("warm", "starft eval, warm feature cache"),
    ):
        print(f"  {label:40s} {med[key]:8.3f} s  {n / med[key]:9.1f} images/s")
    print(
        f"  cold speed-up vs plain: {med['plain'] / med['cold']:.2f}x   warm speed-up vs plain: "
        f"{med['plain'] / med['warm']:.2f}x   top-1 plain {accs['plain']:.4f} / ours {accs['ours']:.4f}"
    )


if __name__ == "__main__":
    main()
