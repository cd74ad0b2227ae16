"""The training input pipeline: decode JPEG/PNG straight to tensors and augment on tensors.

It is the tensor equivalent of open_clip's train transform (RandomResizedCrop with scale 0.9-1.0 and bicubic
resampling, then the CLIP mean/std normalisation), but decodes with torchvision's decoder instead of PIL and
never builds a PIL image. Each sample's augmentation is seeded by (seed, epoch, index), so it does not depend
on the number of workers or processes and a resumed run sees the same crops.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from starft_cli.errors import ImageError

DEFAULT_SCALE = (0.9, 1.0)


def torchvision_decodable(data: bytes | bytearray) -> bool:
    """Whether torchvision's decoder gives exactly the pixels of :func:`starft_cli.images.to_rgb` for this file:
    8-bit JPEG or PNG, grey or RGB, single frame, without transparency. Only the header is parsed (PIL's lazy
    open); every other file goes through PIL."""
    import io

    from PIL import Image

    from starft_cli.images import too_many_pixels

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return (
                    not too_many_pixels(img)  # a decompression bomb goes to PIL's reader, which refuses it
                    and img.format in ("JPEG", "PNG")
                    and img.mode in ("RGB", "L")
                    and getattr(img, "n_frames", 1) == 1
                    and "transparency" not in img.info
                    and not any(";16" in str(getattr(t, "args", "")) for t in (img.tile or []))
                )
    except Exception:  # not an image PIL can identify: PIL's reader names the problem
        return False


def decode_file(path: str | Path) -> torch.Tensor:
    """An image file as a ``uint8`` RGB tensor ``[3, H, W]``: the same pixels as
    ``pil_to_tensor(starft_cli.images.open_image(path))`` (one definition of an image as RGB uint8: first frame,
    16 bits scaled to 8, alpha dropped; see :func:`starft_cli.images.to_rgb`). torchvision's faster decoder is used
    for 8-bit grey/RGB JPEG and PNG, where its pixels equal PIL's; everything else is read with PIL.

    Raises :class:`~starft_cli.errors.ImageError` naming the file when it cannot be read or decoded."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        raw = bytearray(Path(path).read_bytes())
    except OSError as exc:
        raise ImageError(f"cannot read {path} ({exc.strerror})", "Check the dataset files") from None
    if torchvision_decodable(raw):
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders deprecated (torchcodec later)
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_image(torch.frombuffer(raw, dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # torchvision cannot decode it: PIL tries, with its error messages
    from torchvision.transforms.v2.functional import pil_to_tensor

    from starft_cli.images import open_image

    return pil_to_tensor(open_image(path))


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Normalize:
    """``uint8 [..., 3, H, W]`` -> ``float32``: scale to [0, 1] and normalise with mean/std. Applied to whole
    batches on the training device, so the workers hand over 4x smaller ``uint8`` tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # (x / 255 - mean) / std as one multiply and one add per element: x * a + b.
        std_t = torch.tensor(list(std), dtype=torch.float32)
        self.a = (1.0 / (255.0 * std_t)).view(3, 1, 1)
        self.b = (-torch.tensor(list(mean), dtype=torch.float32) / std_t).view(3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        a, b = self.a.to(images.device), self.b.to(images.device)
        return images.to(torch.float32).mul_(a).add_(b)


class TensorTrainTransform:
    """``uint8 [3, H, W]`` -> random resized crop (bicubic, antialiased) -> ``uint8 [3, S, S]``, then, when
    ``normalize``, scaled to [0, 1] and normalised (``float32``)."""

    def __init__(
        self,
        size: int | Sequence[int],
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        scale: tuple[float, float] = DEFAULT_SCALE,
        interpolation: str = "bicubic",
        normalize: bool = True,
    ) -> None:
        from torchvision.transforms import v2

        mode = v2.InterpolationMode.BILINEAR if interpolation == "bilinear" else v2.InterpolationMode.BICUBIC
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=mode, antialias=True)
        self.finish = Normalize(mean, std) if normalize else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        out = self.crop(image)
        return self.finish(out) if self.finish is not None else out


def train_transform(preprocess_cfg: Mapping[str, Any], normalize: bool = True) -> TensorTrainTransform:
    """The tensor train transform for a model's preprocess config (size, mean, std, interpolation)."""
    return TensorTrainTransform(
        size=preprocess_cfg.get("size", 224),
        mean=preprocess_cfg.get("mean", CLIP_MEAN),
        std=preprocess_cfg.get("std", CLIP_STD),
        interpolation=str(preprocess_cfg.get("interpolation", "bicubic")),
        normalize=normalize,
    )


def batch_normalizer(preprocess_cfg: Mapping[str, Any]) -> Normalize:
    """The normalisation that :func:`train_transform` with ``normalize=False`` leaves to the batch."""
    return Normalize(preprocess_cfg.get("mean", CLIP_MEAN), preprocess_cfg.get("std", CLIP_STD))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 1_000_000_007 + index * 7919) % (2**63 - 1)


class TrainSamples(torch.utils.data.Dataset):
    """``(image tensor, label, index)`` of an :class:`~starft_cli.data.base.ImageDataset`, augmented with a
    per-sample seed. Set :attr:`epoch` before creating each epoch's iterator."""

    def __init__(self, dataset: Any, transform: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.paths = getattr(dataset, "paths", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> torch.Tensor:
        if self.paths is not None:
            return decode_file(self.paths[index])
        from starft_cli.data.base import ArrayImageDataset

        if type(self.dataset).get_image is ArrayImageDataset.get_image:
            # an in-memory uint8 [N, H, W, 3] array (CIFAR, STL10, spurious-digits): the same pixels as the PIL
            # round trip, without it
            pixels = np.ascontiguousarray(self.dataset.images[index])
            return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        from torchvision.transforms.v2.functional import pil_to_tensor

        from starft_cli.images import to_rgb

        image = self.dataset.get_image(index)  # RGB from the built-in datasets; to_rgb for any other
        return pil_to_tensor(image if image.mode == "RGB" else to_rgb(image))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.load(index)
        seed = sample_seed(self.seed, self.epoch, index)
        # The crop draws from the CPU generator only. Seeding just that one (not torch.manual_seed, which also
        # queues a seed for every CUDA device and records a stack trace each time while CUDA is not initialised)
        # costs microseconds instead of milliseconds per sample, and gives the same crops.
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            out = self.transform(image)
        else:  # in the main process: leave the global generator as it was
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                out = self.transform(image)
        return out, self.dataset.labels[index], index
