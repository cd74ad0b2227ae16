"""Training input pipeline throughput: ours (torchvision JPEG decode + v2 transforms on tensors) against PIL decode
+ open_clip's own train transform (what the research code does), both through a DataLoader with the same workers.

Generates ImageNet-sized JPEGs (500x375), runs the two pipelines alternately, and prints images/s (median of
several runs), the ratio, and the mean absolute pixel difference of the two paths for the same crop.

    python benchmarks/data_pipeline.py [--images 256] [--workers 2] [--size 224] [--runs 5] [--repeat 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's starft_cli

from starft_cli.data.base import FileImageDataset
from starft_cli.data.pipeline import TrainSamples, batch_normalizer, decode_file, train_transform

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class PilSamples(torch.utils.data.Dataset):
    def __init__(self, dataset: FileImageDataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with Image.open(self.dataset.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.dataset.labels[i], i


def make_images(root: Path, count: int) -> list[Path]:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:375, 0:500]
    paths = []
    for k in range(count):
        base = np.stack([(xx * (k % 7 + 1)) % 256, (yy * 3 + k) % 256, ((xx + yy) // 2) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = root / f"{k}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def throughput(loader, finish=None) -> float:
    """Images per second of one pass over the data (workers already running: steady state), ending with
    normalised float32 batches in this process (``finish`` does the last step where the workers leave it)."""
    start = time.perf_counter()
    n = 0
    for batch in loader:
        images = finish(batch[0]) if finish is not None else batch[0]
        assert images.dtype == torch.float32
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def make_loader(samples, workers: int, batch: int, repeat: int):
    # Each timed pass reads the images `repeat` times, so the pipeline's fill and drain at the start and end of
    # a pass weigh little against its steady state.
    order = list(range(len(samples))) * repeat
    return torch.utils.data.DataLoader(
        samples, batch_size=batch, num_workers=workers, sampler=order, persistent_workers=workers > 0
    )


def pixel_difference(paths: list[Path], size: int) -> float:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F_pil
    from torchvision.transforms.v2 import functional as F_t

    diffs = []
    for k, path in enumerate(paths[:32]):
        ours = decode_file(path)
        pil = Image.open(path).convert("RGB")
        i, j, h, w = 10 + k, 20, 340, 400  # one crop of the kind RandomResizedCrop(scale 0.9-1) picks
        a = F_t.resized_crop(ours, i, j, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        b = F_pil.pil_to_tensor(F_pil.resized_crop(pil, i, j, h, w, [size, size], InterpolationMode.BICUBIC))
        diffs.append((a.float() - b.float()).abs().mean().item())
    return float(np.mean(diffs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=4, help="passes over the images per timed run")
    args = ap.parse_args()
    torch.set_num_threads(1)  # this process only collects batches; the cores belong to the workers
    from open_clip.transform import PreprocessCfg, image_transform_v2

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        ds = FileImageDataset(name="bench", classnames=["x"], labels=[0] * len(paths), paths=paths)
        cfg = {"size": [args.size, args.size], "mean": MEAN, "std": STD}
        ours = TrainSamples(ds, train_transform(cfg, normalize=False), seed=0)  # uint8 crops, as in training
        finish = {"ours": batch_normalizer(cfg), "pil+open_clip": None}
        reference = PilSamples(ds, image_transform_v2(PreprocessCfg(size=args.size), is_train=True))
        loaders = {
            "ours": make_loader(ours, args.workers, args.batch, args.repeat),
            "pil+open_clip": make_loader(reference, args.workers, args.batch, args.repeat),
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for run in range(args.runs + 1):  # the first round starts the workers and warms the page cache
            for name, loader in loaders.items():
                rate = throughput(loader, finish[name])
                if run:
                    rates[name].append(rate)
        del loaders
        med = {k: statistics.median(v) for k, v in rates.items()}
        diff = pixel_difference(paths, args.size)
    print(
        f"{args.images} JPEGs 500x375 -> {args.size}px, {args.workers} workers: ours {med['ours']:.1f} img/s, "
        f"PIL + open_clip {med['pil+open_clip']:.1f} img/s, ratio {med['ours'] / med['pil+open_clip']:.2f}x "
        f"(median of {args.runs}); mean |pixel difference| for the same crop {diff:.2f} / 255"
    )


if __name__ == "__main__":
    main()
