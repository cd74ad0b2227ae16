"""The tensor training pipeline: equivalent to open_clip's PIL train transform, seeded per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F_pil
from torchvision.transforms.v2 import functional as F_t

from starft_cli.data.pipeline import TrainSamples, decode_file, train_transform
from starft_cli.data.registry import load_dataset

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_decode_matches_pil_and_crop_matches_the_pil_path(tmp_path: Path):
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:120, 0:160]
    smooth = np.stack([xx * 1.5, yy * 2.0, (xx + yy)], axis=-1) + rng.normal(0, 8, (120, 160, 3))
    path = tmp_path / "x.jpg"
    Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).save(path, quality=95)
    ours = decode_file(path)
    pil = Image.open(path).convert("RGB")
    assert ours.shape == (3, 120, 160) and ours.dtype == torch.uint8
    assert (ours.float() - F_pil.pil_to_tensor(pil).float()).abs().mean() < 1.5  # libjpeg versions may differ by 1
    i, j, h, w = 10, 20, 100, 120
    a = F_t.resized_crop(ours, i, j, h, w, [64, 64], interpolation=InterpolationMode.BICUBIC, antialias=True)
    b = F_pil.pil_to_tensor(F_pil.resized_crop(pil, i, j, h, w, [64, 64], interpolation=InterpolationMode.BICUBIC))
    assert (a.float() - b.float()).abs().mean() < 2.0  # in 0..255 pixel units


def test_train_transform_output_and_per_sample_seeding(class_folders: Path):
    ds = load_dataset(f"folder:{class_folders}")
    samples = TrainSamples(ds, train_transform({"size": [32, 32], "mean": MEAN, "std": STD}), seed=3)
    x, y, i = samples[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and (y, i) == (ds.labels[5], 5)
    assert x.min() > -2.5 and x.max() < 2.5
    state = torch.get_rng_state()
    again, _, _ = samples[5]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(x, again)
    samples.epoch = 1
    assert not torch.equal(samples[5][0], x)  # another epoch, another crop


def test_workers_give_the_same_batches_as_the_main_process(class_folders: Path):
    ds = load_dataset(f"folder:{class_folders}")
    samples = TrainSamples(ds, train_transform({"size": [32, 32], "mean": MEAN, "std": STD}), seed=0)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(samples, batch_size=4, num_workers=workers)
        batches.append(torch.cat([b[0] for b in loader]))
    assert torch.equal(batches[0], batches[1])


def test_batch_normalisation_equals_per_sample_normalisation(class_folders: Path):
    from starft_cli.data.pipeline import batch_normalizer

    ds = load_dataset(f"folder:{class_folders}")
    cfg = {"size": [32, 32], "mean": MEAN, "std": STD}
    per_sample = TrainSamples(ds, train_transform(cfg), seed=1)
    raw = TrainSamples(ds, train_transform(cfg, normalize=False), seed=1)
    crops = torch.stack([raw[i][0] for i in range(4)])
    assert crops.dtype == torch.uint8
    torch.testing.assert_close(batch_normalizer(cfg)(crops), torch.stack([per_sample[i][0] for i in range(4)]))
