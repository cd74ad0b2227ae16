"""LP-FT: linear probe, then full fine-tuning from the probed head."""

from __future__ import annotations

from starft_cli.train.methods import register
from starft_cli.train.methods.base import HParam
from starft_cli.train.methods.ft import FT


@register
class LPFT(FT):
    """LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
    ICLR 2022): first a linear probe (only the head trains, on frozen features), then cross-entropy fine-tuning of
    the image tower and the head from the probed head, so the features are not distorted by a random or poor head.

    One run, two stages: the first ``lp_fraction`` of the steps probe with learning rate ``lp_lr``; the rest
    fine-tune with ``--lr``. Each stage has its own warm-up, of ``--warmup`` steps but at most a tenth of the stage
    (at least one step), then its own cosine decay; the optimizer's moments restart at the boundary (the
    fine-tuning stage is a fresh fine-tuning from the probed model).
    The paper probes to convergence with logistic regression; here the probe is trained by the same optimizer, for
    a fraction of the budget, which keeps the comparison within one budget."""

    name = "lp-ft"
    title = "linear probe, then fine-tune the image tower from the probed head"
    source = "Kumar et al., Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution, ICLR 2022"
    loss_doc = "stage 1: L = CE(W f0(x), y), only W trains; stage 2: L = CE(W f(x), y), f and W train from stage 1's W"
    hparams = (
        HParam("lp_fraction", 0.5, "share of the run's steps spent probing", minimum=0.0, maximum=1.0),
        HParam("lp_lr", 1e-3, "peak learning rate of the probing stage"),
    )

    def stages(self, total_steps: int) -> list[tuple[str, int]]:
        lp = min(total_steps, round(float(self.hp["lp_fraction"]) * total_steps))
        return [("lp", lp), ("ft", total_steps - lp)]

    def trainable(self, name: str, stage: str) -> bool:
        if stage == "lp":
            return name.startswith("head.")
        return super().trainable(name, stage)

    def learning_rate(self, step: int, total_steps: int, base_lr: float, warmup: int) -> float:
        from starft_cli.train.schedules import cosine_lr

        stage, start, length = self.stage_at(step, total_steps)
        peak = float(self.hp["lp_lr"]) if stage == "lp" else base_lr
        return cosine_lr(step - start, peak, min(warmup, max(length // 10, 1)) if warmup else 0, length)
