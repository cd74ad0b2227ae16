"""Image features of a dataset under a model, computed once and cached on disk.

The cache key is the model's identity (:func:`~starft_cli.models.model_identity`: weights, model and preprocessing
config, tokenizer, dtype, device type), the dataset's content fingerprint (file paths, sizes, modification times,
inodes and status-change times, or array contents), the mixed-precision dtype and the decode mode: change any of
them and the features are recomputed. An image replaced by a copy that keeps its path, size and mtime (``cp -p``,
``rsync -a``, ``tar x``) still has a new ctime (no copy can set it), so it is recomputed too. Entries are
safetensors files under ``<cache>/features``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_cli.diskcache import Entry, TensorCache, cache_key
from starft_cli.errors import ImageError
from starft_cli.images import RGB_VERSION, open_image

if TYPE_CHECKING:
    import torch

    from starft_cli.data.base import ImageDataset
    from starft_cli.models import LoadedModel

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
ProgressFn = Callable[[int, int], None]


@dataclass
class Features:
    """L2-normalised image features ``[N, D]`` (float32, CPU) with the indices of unreadable images."""

    features: torch.Tensor
    skipped: list[int] = field(default_factory=list)
    skipped_names: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def valid(self) -> torch.Tensor:
        import torch

        mask = torch.ones(len(self.features), dtype=torch.bool)
        if self.skipped:
            mask[torch.tensor(self.skipped)] = False
        return mask


# Features ``[N, D]`` and the skipped images (a JSON sidecar) per key: see feature_cache_key.
FEATURE_CACHE: TensorCache[Features] = TensorCache("features", "feature", with_meta=True)


def open_for_eval(path: Path, min_side: int | None) -> Any:
    """Open an image as RGB (:func:`starft_cli.images.open_image`: the one definition every path uses). With
    ``min_side`` (``--fast-decode``), a JPEG larger than needed is decoded at a reduced scale (libjpeg's DCT
    scaling, PIL's draft mode) that keeps its shorter side at least ``min_side``: faster, but not the pixels of
    the standard pipeline, so metrics may differ slightly; without it, every image is decoded in full."""
    if not min_side:
        return open_image(path)
    from PIL import Image

    from starft_cli.images import to_rgb, too_many_pixels

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if too_many_pixels(img):
                    return open_image(path)  # raises the standard ImageError (a bomb is not decoded)
                if img.format == "JPEG" and img.mode in ("RGB", "L"):
                    img.draft(img.mode, (min_side, min_side))
                img.load()
                return to_rgb(img)
    except Exception:
        return open_image(path)  # raises the standard ImageError naming the problem (or reads it plainly)


class _EvalView:
    """What the DataLoader iterates: ``(tensor or None, index)``; an unreadable image yields None."""

    def __init__(self, dataset: ImageDataset, transform: Callable[[Any], Any], min_side: int | None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.min_side = min_side
        self.paths = getattr(dataset, "paths", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        try:
            if self.paths is not None:
                image = open_for_eval(self.paths[index], self.min_side)
            else:
                image = self.dataset.get_image(index)
        except ImageError as exc:
            return None, index, exc.message
        return self.transform(image), index, ""


def _collate(batch: list[tuple[Any, int, str]]) -> tuple[Any, list[int], list[tuple[int, str]]]:
    import torch

    good = [(x, i) for x, i, _ in batch if x is not None]
    bad = [(i, msg) for x, i, msg in batch if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


def input_size(loaded: LoadedModel) -> int:
    size = loaded.preprocess_cfg.get("size", 224)
    return int(max(size) if isinstance(size, list | tuple) else size)


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The mixed-precision dtype features are computed in on ``device`` (None: full float32, on CPU)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def feature_cache_key(
    loaded: LoadedModel,
    dataset: ImageDataset,
    decode: str,
    data_fingerprint: str | None = None,
    device: str | torch.device = "cpu",
) -> str:
    """The one place the feature cache key is built (see the module docstring)."""
    from starft_cli.models import model_identity

    payload = {
        "v": CACHE_VERSION,
        "model": model_identity(loaded, device=device),
        "data": data_fingerprint or dataset.fingerprint(),
        "preprocess": loaded.preprocess_cfg,
        "autocast": str(autocast_dtype(device)),
        "decode": decode,
    }
    return cache_key(payload, sort_keys=True)


def compute_features(
    loaded: LoadedModel,
    dataset: ImageDataset,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    use_cache: bool = True,
    fast_decode: bool = False,
    progress: ProgressFn | None = None,
    data_fingerprint: str | None = None,
) -> Features:
    """Features of every image of ``dataset`` (cached; see the module docstring).

    An unreadable image is skipped with a warning and listed in ``Features.skipped``; with ``strict`` it raises
    :class:`~starft_cli.errors.ImageError`. Mixed precision (autocast) is used on CUDA only. ``data_fingerprint``
    saves recomputing ``dataset.fingerprint()`` when the caller has it.
    """
    min_side = 2 * input_size(loaded) if fast_decode else None
    decode = f"rgb{RGB_VERSION}:" + (f"draft>={min_side}" if min_side else "full")
    key = feature_cache_key(loaded, dataset, decode, data_fingerprint, device=device)

    def from_entry(entry: Entry) -> Features | None:
        features, meta = entry.tensors["features"], entry.meta or {}
        if features.shape[0] != len(dataset) or (strict and meta["skipped"]):
            return None
        return Features(features, list(meta["skipped"]), list(meta["names"]), from_cache=True)

    result, hit = FEATURE_CACHE.get_or_compute(
        key,
        lambda: _compute(loaded, dataset, device, batch_size, workers, strict, min_side, progress),
        encode=lambda f: Entry({"features": f.features}, {"skipped": f.skipped, "names": f.skipped_names}),
        decode=from_entry,
        use_cache=use_cache,
    )
    if hit and progress is not None:
        progress(len(dataset), len(dataset))
    return result


def _compute(
    loaded: LoadedModel,
    dataset: ImageDataset,
    device: str | torch.device,
    batch_size: int,
    workers: int,
    strict: bool,
    min_side: int | None,
    progress: ProgressFn | None,
) -> Features:
    """The features of :func:`compute_features`, computed (no cache)."""
    import torch

    from starft_cli.threads import checked_workers

    device = torch.device(device)
    model = loaded.model
    view = _EvalView(dataset, loaded.preprocess, min_side)
    loader = torch.utils.data.DataLoader(
        view,
        batch_size=batch_size,
        shuffle=False,
        num_workers=checked_workers(workers),
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    dim = int(loaded.model_cfg.get("embed_dim", 0)) or None
    out: torch.Tensor | None = None
    skipped: list[int] = []
    names: list[str] = []
    done = 0
    was_training = model.training
    model.eval()
    autocast = None
    dtype = autocast_dtype(device)
    if dtype is not None:  # mixed precision on GPU only; features are normalised in float32 afterwards
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    try:
        with torch.inference_mode():
            for images, indices, bad in loader:
                for index, message in bad:
                    if strict:
                        raise ImageError(
                            message, "Remove or replace the file, or run without `strict` to skip it", param="strict"
                        )
                    logger.warning("skipping unreadable image: %s", message)
                    skipped.append(index)
                    names.append(dataset.describe(index))
                if images is not None:
                    images = images.to(device, non_blocking=True)
                    if autocast is not None:
                        with autocast:
                            feats = model.encode_image(images)
                    else:
                        feats = model.encode_image(images)
                    feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
                    if out is None:
                        out = torch.zeros(len(dataset), dim or feats.shape[1], dtype=torch.float32)
                    out[torch.tensor(indices)] = feats
                done += len(indices) + len(bad)
                if progress is not None:
                    progress(done, len(dataset))
    finally:
        model.train(was_training)
    if out is None:
        out = torch.zeros(len(dataset), dim or 1, dtype=torch.float32)
    pairs = sorted(zip(skipped, names, strict=True))
    return Features(out, [i for i, _ in pairs], [n for _, n in pairs])
