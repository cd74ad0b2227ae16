"""One training step's loss: the efficient StarFT step and the straightforward four-forward reference.

Straightforward (what research code does): student image + caption forward, student spurious-text forward,
teacher image forward, teacher spurious-text forward. Efficient (the default):

* the teacher's spurious-text features come from the bank (computed once per run);
* captions and spurious texts go through the student's text tower in one call, each distinct text once;
* with a frozen text tower the student's caption and spurious features are the bank's too (no text forward
  or backward at all).

Both give the same loss and gradients (to float tolerance; tested). The method (StarFT, FLYP, KL, CaRot, ...)
says which features it needs and computes its regulariser from them (:mod:`starft_cli.train.methods`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from starft_cli.train.bank import TextBank, spurious_text
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods.base import Features
from starft_cli.train.text import encode_text

if TYPE_CHECKING:
    from starft_cli.train.methods import Method, RunContext

__all__ = ["ClassifierStep", "Features", "MicroBatch", "StarStep", "StepOutput", "Towers", "template_indices"]


class Towers(nn.Module):
    """The trainable model as DDP sees it: ``forward(images, *token_batches)`` returns the normalised
    image features, one normalised text-feature tensor per token batch, and ``exp(logit_scale)``.

    With a classification ``head`` (classifier methods) ``forward(images)`` returns ``(logits, image)``: the
    head's logits (n, C) and the normalised image features (n, d).
    """

    def __init__(self, clip: Any, head: Any | None = None, trim: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.head = head
        self.trim = trim

    def forward(self, images: torch.Tensor | None, *texts: torch.Tensor) -> tuple[Any, ...]:
        if self.head is not None:
            image = self.clip.encode_image(images, normalize=True)
            return self.head(image), image
        image = self.clip.encode_image(images, normalize=True) if images is not None else None
        feats = [encode_text(self.clip, t, normalize=True, trim=self.trim) for t in texts]
        return (image, *feats, self.clip.logit_scale.exp())


@dataclass
class StepOutput:
    loss: torch.Tensor  # what this process back-propagates (its share of the global loss)
    contrastive: torch.Tensor
    reg: torch.Tensor


@dataclass
class ClassifierStep:
    """Computes a classifier method's loss of a micro-batch: the head's logits and the image features from
    ``towers`` (possibly DDP-wrapped), the frozen ``teacher``'s image features when the method needs them, then
    :meth:`Method.classifier_loss` (a mean over the micro-batch's rows)."""

    towers: Any
    teacher: Any | None
    method: Method
    ctx: RunContext
    autocast_dtype: Any = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int, lam: float) -> StepOutput:
        from starft_cli.train.methods import ClassifierBatch

        ctx = (
            torch.autocast(device_type=images.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            logits, image = self.towers(images)
            teacher_image = None
            if self.method.needs_teacher and self.teacher is not None:
                with torch.no_grad():
                    teacher_image = self.teacher.encode_image(images, normalize=True).float()
        batch = ClassifierBatch(logits.float(), image.float(), teacher_image, labels, step)
        parts = self.method.classifier_loss(batch, lam, self.ctx)
        return StepOutput(loss=parts.total, contrastive=parts.main, reg=parts.reg)


@dataclass
class MicroBatch:
    """One micro-batch of a step: images (n, 3, H, W) normalised, labels (n,), captions, template indices (n,)."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: Sequence[str]
    template_idx: torch.Tensor


@dataclass
class StarStep:
    """Computes a contrastive method's loss of a micro-batch: FLYP's contrastive loss plus ``lambda x`` the
    method's regulariser (:meth:`Method.regularizer`), from the features the method declares it needs.

    ``towers`` is the (possibly DDP-wrapped) :class:`Towers`; ``teacher`` the frozen model (None when the method
    needs none); ``bank`` the teacher's :class:`TextBank` for the training classes (used by the efficient step
    when captions are the class captions, and by ``freeze_text``); ``ctx`` the run as the method sees it.
    """

    towers: Any
    clip: Any  # the student's CLIP model (unwrapped)
    teacher: Any | None
    tokenizer: Callable[..., Any]
    pool: Sequence[str]
    method: Method
    ctx: RunContext | None = None
    freeze_text: bool = False
    impl: str = "efficient"
    bank: TextBank | None = None
    env: DistEnv = field(default_factory=DistEnv)
    autocast_dtype: Any = None  # torch.bfloat16 / torch.float16 under mixed precision

    def __post_init__(self) -> None:
        if self.ctx is None:  # unit tests drive the step alone
            from starft_cli.train.methods import RunContext

            self.ctx = RunContext(self.clip, self.teacher, None, self.tokenizer, [], [], None, self.env)
            self.method.setup(self.ctx)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        captions: Sequence[str],
        template_idx: torch.Tensor,
        lam: float,
        class_captions: bool,
    ) -> StepOutput:
        """``captions[i]`` is sample i's caption; ``class_captions`` says they are the classes' own captions
        (so the bank applies). ``template_idx[i]`` picks sample i's spurious template from the pool."""
        use_reg, skipped = self._reg_mode(lam)
        feats = self.features(images, labels, captions, template_idx, use_reg, class_captions)
        return self.loss(feats, labels, lam, use_reg, skipped)

    def accumulate(
        self,
        micro: Sequence[MicroBatch],
        lam: float,
        class_captions: bool,
        backward: Callable[[torch.Tensor], None],
        no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> StepOutput:
        """The loss of the whole batch made of ``micro``, back-propagated one micro-batch at a time: exact
        gradient accumulation for batch-coupled losses (open_clip's scheme).

        The contrastive loss and the regulariser couple every sample of the batch (negatives; the softmax over
        the batch's spurious texts), so a per-micro-batch loss would be another objective. Here the features of
        every micro-batch are computed first without gradients; then each micro-batch is recomputed with
        gradients and the whole batch's loss is taken against the cached features of the others, and
        ``backward(loss)`` is called. The sum of those gradients is the gradient of the unaccumulated step
        (``exp(logit_scale)`` carries its gradient in the last pass only, so it is counted once). ``no_sync``
        (DDP's) wraps every backward but the last. Returns the whole batch's loss (each pass computes it).
        """
        use_reg, skipped = self._reg_mode(lam)
        device = micro[0].images.device
        rng: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # each micro-batch's RNG state before its first pass
        cached = []
        with torch.no_grad():
            for m in micro:
                rng.append(_rng_state(device))
                cached.append(self.features(m.images, m.labels, m.captions, m.template_idx, use_reg, class_captions))
        after = _rng_state(device)
        labels = torch.cat([m.labels for m in micro])
        out: StepOutput | None = None
        for j, m in enumerate(micro):
            last = j == len(micro) - 1
            # The second pass replays the first one's random draws (dropout, stochastic depth): the features with
            # gradients are the cached ones, so every pass computes the loss of one and the same batch.
            _set_rng_state(rng[j], device)
            with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
                mine = self.features(m.images, m.labels, m.captions, m.template_idx, use_reg, class_captions, False)
                # the teacher's features need no second forward
                mine.t_img, mine.t_sp, mine.extra = cached[j].t_img, cached[j].t_sp, cached[j].extra
                scale = mine.scale if last else mine.scale.detach()
                out = self.loss(
                    Features.cat([*cached[:j], mine, *cached[j + 1 :]], scale), labels, lam, use_reg, skipped
                )
                backward(out.loss)
        _set_rng_state(after, device)
        assert out is not None
        return StepOutput(loss=out.loss.detach(), contrastive=out.contrastive, reg=out.reg)

    def _reg_mode(self, lam: float) -> tuple[bool, bool]:
        """(compute the regulariser, it is skipped for its zero weight)."""
        use_reg = self.method.regularized and (self.teacher is not None or not self.method.needs_teacher)
        # With a zero weight (the last epoch of the linear schedule) the regulariser cannot change the gradient:
        # the efficient step skips it, teacher forward included, and reports it as not computed (NaN).
        skipped = use_reg and lam == 0.0 and self.impl == "efficient"
        return use_reg and not skipped, skipped

    def features(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        captions: Sequence[str],
        template_idx: torch.Tensor,
        use_reg: bool,
        class_captions: bool,
        teacher: bool = True,
    ) -> Features:
        """The features the loss needs (see :class:`Features`); ``teacher=False`` leaves out the teacher's
        features that need a teacher forward (the caller has them)."""
        spurious: list[str] = []
        pooled = use_reg and self.method.needs_pool
        if pooled:
            spurious = [
                spurious_text(self.pool[int(k)], c) for k, c in zip(template_idx.tolist(), captions, strict=True)
            ]
        if self.impl == "straightforward":
            parts = self._straightforward(images, captions, spurious, pooled, use_reg, teacher)
        else:
            parts = self._efficient(
                images, labels, captions, spurious, template_idx, pooled, use_reg, class_captions, teacher
            )
        feats = Features(*parts)
        if use_reg and teacher and _overrides(self.method, "teacher_features"):
            with torch.no_grad(), self._autocast(images.device):
                tokens = self.tokenizer(list(captions)).to(images.device)
                assert self.ctx is not None
                feats.extra = self.method.teacher_features(self.ctx, images, tokens)
        return feats

    def loss(self, f: Features, labels: torch.Tensor, lam: float, use_reg: bool, skipped: bool) -> StepOutput:
        """The contrastive loss (+ ``lam`` x the regulariser) of this process's rows ``f`` with ``labels`` (n,)."""
        from starft_cli.losses import contrastive_loss

        env = self.env
        l_con = contrastive_loss(
            f.img.float(), f.cap.float(), f.scale.float(), rank=env.rank, world_size=env.world_size
        )
        if not use_reg:
            reg = l_con.new_full((), float("nan")) if skipped else l_con.new_zeros(())
            return StepOutput(loss=l_con, contrastive=l_con.detach(), reg=reg)
        assert self.ctx is not None
        l_reg = self.method.regularizer(f, labels, self.ctx)
        return StepOutput(loss=l_con + lam * l_reg, contrastive=l_con.detach(), reg=l_reg.detach())

    # -------------------------------------------------------------------------------------------------
    def _straightforward(
        self,
        images: torch.Tensor,
        captions: Sequence[str],
        spurious: Sequence[str],
        pooled: bool,
        use_reg: bool,
        teacher: bool,
    ) -> tuple[Any, ...]:
        device = images.device
        cap_tokens = self.tokenizer(list(captions)).to(device)
        t_img = t_sp = s_sp = None
        with self._autocast(device):
            if pooled:
                sp_tokens = self.tokenizer(list(spurious)).to(device)
                img, cap, s_sp, scale = self.towers(images, cap_tokens, sp_tokens)
                if teacher:
                    with torch.no_grad():
                        t_sp = self.teacher.encode_text(sp_tokens, normalize=True)
            else:
                img, cap, scale = self.towers(images, cap_tokens)
            if use_reg and teacher and self.teacher is not None:
                with torch.no_grad():
                    t_img = self.teacher.encode_image(images, normalize=True)
        return img, cap, s_sp, scale, t_img, t_sp

    def _efficient(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        captions: Sequence[str],
        spurious: Sequence[str],
        template_idx: torch.Tensor,
        pooled: bool,
        use_reg: bool,
        class_captions: bool,
        teacher: bool = True,
    ) -> tuple[Any, ...]:
        device = images.device
        n = len(captions)
        banked = class_captions and self.bank is not None
        t_sp = None
        with self._autocast(device):
            if self.freeze_text:
                # The student's text tower is the teacher's, frozen: its features need no forward here.
                if banked:
                    cap = self.bank.captions[labels]
                    s_sp = self.bank.spurious[labels, template_idx] if pooled else None
                else:
                    texts = list(captions) + (list(spurious) if pooled else [])
                    feats = self._encode_frozen(texts, device)
                    cap, s_sp = feats[:n], (feats[n:] if pooled else None)
                (img, scale) = self.towers(images)
                t_sp = s_sp
            else:
                unique, index = _dedupe(list(captions) + list(spurious))
                tokens = self.tokenizer(unique).to(device)
                img, text_feats, scale = self.towers(images, tokens)
                text_feats = text_feats[torch.as_tensor(index, device=device)]
                cap = text_feats[:n]
                s_sp = text_feats[n:] if pooled else None
                if pooled:
                    if banked:
                        t_sp = self.bank.spurious[labels, template_idx]
                    elif teacher:
                        with torch.no_grad():
                            tokens = self.tokenizer(list(spurious)).to(device)
                            t_sp = encode_text(self.teacher, tokens, normalize=True)
            t_img = None
            if use_reg and teacher and self.teacher is not None:
                with torch.no_grad():
                    t_img = self.teacher.encode_image(images, normalize=True)
        return img, cap, s_sp, scale, t_img, t_sp

    def _encode_frozen(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        unique, index = _dedupe(texts)
        model = self.teacher if self.teacher is not None else self.clip
        with torch.no_grad():
            feats = encode_text(model, self.tokenizer(unique).to(device), normalize=True)
        return feats[torch.as_tensor(index, device=device)]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU generator's state and, on a CUDA device, that device's (where dropout draws its masks)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _overrides(method: Method, hook: str) -> bool:
    """Whether ``method`` implements ``hook`` itself (the base class's does nothing)."""
    from starft_cli.train.methods import Method as Base

    return getattr(type(method), hook) is not getattr(Base, hook)


def _dedupe(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct texts in first-seen order, and each input's position among them."""
    positions: dict[str, int] = {}
    index = [positions.setdefault(t, len(positions)) for t in texts]
    return list(positions), index


def template_indices(seed: int, step: int, micro: int, global_batch: int, pool_size: int, env: DistEnv) -> torch.Tensor:
    """Each sample's spurious template, uniform over the pool: a function of (seed, step, micro-batch, position in
    the global batch) only, so it survives a resume and does not depend on the number of processes."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step * 131 + micro) % (2**63 - 1))
    draws = torch.randint(pool_size, (global_batch,), generator=gen)
    local = global_batch // env.world_size
    return draws[env.rank * local : (env.rank + 1) * local]
