"""Per-epoch ID validation of the model being trained (zero-shot head, or the CE head): top-1 accuracy, and the
worst-group and mean-group accuracies when the validation set has groups (what ``--select-by`` chooses from)."""

from __future__ import annotations

from typing import Any

SELECT_BY = ("top1", "worst_group_acc", "mean_group_acc")
GROUP_CRITERIA = ("worst_group_acc", "mean_group_acc")


def group_summary(correct: Any, count: Any) -> dict[str, float]:
    """``worst_group_acc`` and ``mean_group_acc`` from per-group correct / sample counts (tensors ``[G]``), over
    the groups that have samples (as :func:`starft_cli.eval.metrics.group_accuracies` defines them)."""
    present = count > 0
    if not bool(present.any()):
        return {}
    accs = correct[present] / count[present]
    return {"worst_group_acc": float(accs.min()), "mean_group_acc": float(accs.mean())}


def validation_metrics(
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
) -> dict[str, float]:
    """``{"top1": ...}`` on ``dataset``, plus ``worst_group_acc`` and ``mean_group_acc`` when it has groups.

    Each process takes every ``world_size``-th sample; counts (per group too) are summed over processes.
    """
    import torch

    from starft_cli.prompts import load_templates
    from starft_cli.train.distributed import DistEnv
    from starft_cli.zeroshot import zero_shot_head

    env = env or DistEnv()
    if head is None:
        names = load_templates(templates or getattr(dataset, "templates", None) or "imagenet80")
        weights = zero_shot_head(model, tokenizer, dataset.classnames, names, device=device, scale=True)
    indices = range(env.rank, len(dataset), env.world_size)
    subset = torch.utils.data.Subset(dataset.with_transform(preprocess), indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)
    groups = getattr(dataset, "groups", None)
    n_groups = 0
    if groups is not None:
        n_groups = max(len(getattr(dataset, "group_names", None) or []), max(groups, default=-1) + 1)
    # counts[0] = correct, counts[1] = samples; column 0 is the total, column 1 + g group g
    counts = torch.zeros(2, 1 + n_groups, dtype=torch.float64, device=device)
    group_of = torch.as_tensor([groups[i] for i in indices] if groups is not None else [], dtype=torch.long)
    seen = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            feats = model.encode_image(images, normalize=True).float()
            logits = head(feats) if head is not None else feats @ weights.T
            hit = (logits.argmax(dim=1) == labels).to(torch.float64)
            counts[0, 0] += hit.sum()
            counts[1, 0] += labels.numel()
            if n_groups:
                g = 1 + group_of[seen : seen + labels.numel()].to(device)
                counts[0].index_add_(0, g, hit)
                counts[1].index_add_(0, g, torch.ones_like(hit))
            seen += labels.numel()
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(counts)
    out = {"top1": float(counts[0, 0] / counts[1, 0].clamp(min=1))}
    if n_groups:
        out.update(group_summary(counts[0, 1:].cpu(), counts[1, 1:].cpu()))
    return out


def accuracy(*args: Any, **kwargs: Any) -> float:
    """Top-1 accuracy (see :func:`validation_metrics` for the arguments)."""
    return validation_metrics(*args, **kwargs)["top1"]
