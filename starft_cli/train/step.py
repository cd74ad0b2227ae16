"""One training step's loss: the efficient StarFT step and the straightforward four-forward reference.

Straightforward (what research code does): student image + caption forward, student spurious-text forward,
teacher image forward, teacher spurious-text forward. Efficient (the default):

* the teacher's spurious-text features come from the bank (computed once per run);
* captions and spurious texts go through the student's text tower in one call, each distinct text once;
* with a frozen text tower the student's caption and spurious features are the bank's too (no text forward
  or backward at all).

Both give the same loss and gradients (to float tolerance; tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from starft_cli.train.bank import TextBank, spurious_text
from starft_cli.train.distributed import DistEnv, gather_no_grad, gather_with_grad


def encode_text(model: Any, tokens: torch.Tensor, normalize: bool = True, trim: bool = True) -> torch.Tensor:
    """``model.encode_text``, but through only as many positions as the longest text needs.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after the last end-of-text
    token cannot change any feature: dropping it gives the same features for a fraction of the cost (the
    captions and spurious texts are ~15 tokens of a 77-token context). Models of another shape fall back to
    ``encode_text``.
    """
    if not (trim and _trimmable(model)):
        return model.encode_text(tokens, normalize=normalize)
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    if model.text_pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def _trimmable(model: Any) -> bool:
    from open_clip.model import CLIP

    return (
        type(model) is CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and (model.text_pool_type == "argmax" or getattr(model, "text_eos_id", None) is not None)
        and not getattr(model.transformer, "grad_checkpointing", False)
    )


class Towers(nn.Module):
    """The trainable model as DDP sees it: ``forward(images, *token_batches)`` returns the normalised
    image features, one normalised text-feature tensor per token batch, and ``exp(logit_scale)``.

    With a classification ``head`` (the CE baseline) ``forward(images)`` returns ``(logits,)``.
    """

    def __init__(self, clip: Any, head: Any | None = None, trim: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.head = head
        self.trim = trim

    def forward(self, images: torch.Tensor | None, *texts: torch.Tensor) -> tuple[Any, ...]:
        if self.head is not None:
            return (self.head(self.clip.encode_image(images, normalize=True)),)
        image = self.clip.encode_image(images, normalize=True) if images is not None else None
        feats = [encode_text(self.clip, t, normalize=True, trim=self.trim) for t in texts]
        return (image, *feats, self.clip.logit_scale.exp())


@dataclass
class StepOutput:
    loss: torch.Tensor  # what this process back-propagates (its share of the global loss)
    contrastive: torch.Tensor
    reg: torch.Tensor


@dataclass
class StarStep:
    """Computes the StarFT / FLYP / KL loss of a micro-batch.

    ``towers`` is the (possibly DDP-wrapped) :class:`Towers`; ``teacher`` the frozen model (None for
    ``reg == "none"``); ``bank`` the teacher's :class:`TextBank` for the training classes (needed by the
    efficient step when captions are the class captions, and by ``freeze_text``).
    """

    towers: Any
    clip: Any  # the student's CLIP model (unwrapped)
    teacher: Any | None
    tokenizer: Callable[..., Any]
    pool: Sequence[str]
    teacher_scale: float
    reg: str = "star"
    freeze_text: bool = False
    impl: str = "efficient"
    bank: TextBank | None = None
    env: DistEnv = field(default_factory=DistEnv)
    autocast_dtype: Any = None  # torch.bfloat16 / torch.float16 under mixed precision

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
        from starft_cli.losses import contrastive_loss, star_regularizer

        use_reg = self.reg != "none" and self.teacher is not None
        # With a zero weight (the last epoch of the linear schedule) the regulariser cannot change the gradient:
        # the efficient step skips it, teacher forward included, and reports it as not computed (NaN).
        skipped = use_reg and lam == 0.0 and self.impl == "efficient"
        use_reg = use_reg and not skipped
        spurious = [spurious_text(self.pool[int(k)], c) for k, c in zip(template_idx.tolist(), captions, strict=True)]
        if self.impl == "straightforward":
            img, cap, s_sp, scale, t_img, t_sp = self._straightforward(images, captions, spurious, use_reg)
        else:
            img, cap, s_sp, scale, t_img, t_sp = self._efficient(
                images, labels, captions, spurious, template_idx, use_reg, class_captions
            )
        env = self.env
        l_con = contrastive_loss(img.float(), cap.float(), scale.float(), rank=env.rank, world_size=env.world_size)
        if not use_reg:
            reg = l_con.new_full((), float("nan")) if skipped else l_con.new_zeros(())
            return StepOutput(loss=l_con, contrastive=l_con.detach(), reg=reg)
        columns_student = gather_with_grad(s_sp, env) if s_sp.requires_grad else gather_no_grad(s_sp, env)
        l_reg = star_regularizer(
            t_img,
            gather_no_grad(t_sp, env),
            img,
            columns_student,
            self.teacher_scale,
            labels,
            masked=self.reg == "star",
            column_labels=gather_no_grad(labels, env),
            normalizer=labels.shape[0],  # this process's share: the mean over processes is the global mean
        )
        return StepOutput(loss=l_con + lam * l_reg, contrastive=l_con.detach(), reg=l_reg.detach())

    # -------------------------------------------------------------------------------------------------
    def _straightforward(
        self, images: torch.Tensor, captions: Sequence[str], spurious: Sequence[str], use_reg: bool
    ) -> tuple[Any, ...]:
        device = images.device
        cap_tokens = self.tokenizer(list(captions)).to(device)
        with self._autocast(device):
            if use_reg:
                sp_tokens = self.tokenizer(list(spurious)).to(device)
                img, cap, s_sp, scale = self.towers(images, cap_tokens, sp_tokens)
                with torch.no_grad():
                    t_img = self.teacher.encode_image(images, normalize=True)
                    t_sp = self.teacher.encode_text(sp_tokens, normalize=True)
            else:
                img, cap, scale = self.towers(images, cap_tokens)
                s_sp = t_img = t_sp = None
        return img, cap, s_sp, scale, t_img, t_sp

    def _efficient(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        captions: Sequence[str],
        spurious: Sequence[str],
        template_idx: torch.Tensor,
        use_reg: bool,
        class_captions: bool,
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
                    s_sp = self.bank.spurious[labels, template_idx] if use_reg else None
                else:
                    texts = list(captions) + (list(spurious) if use_reg else [])
                    feats = self._encode_frozen(texts, device)
                    cap, s_sp = feats[:n], (feats[n:] if use_reg else None)
                (img, scale) = self.towers(images)
                t_sp = s_sp
            else:
                texts = list(captions)
                if use_reg:
                    texts += list(spurious)
                unique, index = _dedupe(texts)
                tokens = self.tokenizer(unique).to(device)
                img, text_feats, scale = self.towers(images, tokens)
                text_feats = text_feats[torch.as_tensor(index, device=device)]
                cap = text_feats[:n]
                s_sp = text_feats[n:] if use_reg else None
                if use_reg:
                    if banked:
                        t_sp = self.bank.spurious[labels, template_idx]
                    else:
                        with torch.no_grad():
                            tokens = self.tokenizer(list(spurious)).to(device)
                            t_sp = encode_text(self.teacher, tokens, normalize=True)
            t_img = None
            if use_reg:
                with torch.no_grad():
                    t_img = self.teacher.encode_image(images, normalize=True)
        return img, cap, s_sp, scale, t_img, t_sp

    def _encode_frozen(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        unique, index = _dedupe(texts)
        model = self.teacher if self.teacher is not None else self.clip
        with torch.no_grad():
            feats = encode_text(model, self.tokenizer(unique).to(device), normalize=True)
        return feats[torch.as_tensor(index, device=device)]


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
