"""Per-epoch ID validation: top-1 accuracy of the model being trained (zero-shot head, or the CE head)."""

from __future__ import annotations

from typing import Any


def accuracy(
    model: Any,
    tokenizer: Any,
    preprocess: Any,
    dataset: Any,
    *,
    templates: str | None,
    device: Any,
    batch_size: int = 256,
    workers: int = 0,
    head: Any | None = None,
    env: Any = None,
) -> float:
    """Top-1 accuracy on ``dataset`` (each process takes every ``world_size``-th sample; counts are summed)."""
    import torch

    from starft_cli.prompts import load_templates
    from starft_cli.train.distributed import DistEnv
    from starft_cli.zeroshot import zero_shot_head

    env = env or DistEnv()
    if head is None:
        names = load_templates(templates or getattr(dataset, "templates", None) or "imagenet80")
        weights = zero_shot_head(model, tokenizer, dataset.classnames, names, device=device, scale=True)
    subset = torch.utils.data.Subset(dataset.with_transform(preprocess), range(env.rank, len(dataset), env.world_size))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            feats = model.encode_image(images, normalize=True).float()
            logits = head(feats) if head is not None else feats @ weights.T
            correct[0] += (logits.argmax(dim=1) == labels).sum()
            correct[1] += labels.numel()
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(correct)
    return float(correct[0] / correct[1].clamp(min=1))
