"""The efficient StarFT step equals the straightforward four-forward step (loss and gradients, 1e-5)."""

from __future__ import annotations

import copy

import pytest
import torch

from starft_cli.models import load
from starft_cli.prompts import load_pool
from starft_cli.train.bank import build_bank, class_captions
from starft_cli.train.distributed import DistEnv
from starft_cli.train.methods import make_method
from starft_cli.train.step import StarStep, Towers, template_indices

METHOD_OF = {"star": "starft", "kl": "kl", "none": "flyp"}
CLASSES = ["cat", "dog", "car", "tree"]


def _setup(freeze_text: bool, seed: int = 0):
    loaded = load("starft-tiny:none", seed=seed)
    teacher = copy.deepcopy(loaded.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = loaded.model
    with torch.no_grad():  # the student has moved away from the teacher, as after some training
        g = torch.Generator().manual_seed(1)
        for name, p in student.named_parameters():
            if freeze_text and not name.startswith("visual."):
                continue
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    if freeze_text:
        for name, p in student.named_parameters():
            if not (name.startswith("visual.") or name.startswith("logit_")):
                p.requires_grad_(False)
    student.train()
    pool = load_pool("background")
    bank = build_bank(teacher, loaded.tokenizer, CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    return loaded, student, teacher, pool, bank


def _run(impl: str, freeze_text: bool, reg: str, labels: list[int], captions: list[str] | None = None):
    loaded, student, teacher, pool, bank = _setup(freeze_text)
    towers = Towers(student, trim=impl == "efficient")
    step = StarStep(
        towers=towers,
        clip=student,
        teacher=teacher,
        tokenizer=loaded.tokenizer,
        pool=pool,
        method=make_method(METHOD_OF[reg]),
        freeze_text=freeze_text,
        impl=impl,
        bank=bank,
    )
    n = len(labels)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor(labels)
    class_caps = captions is None
    caps = captions or [class_captions(CLASSES, "a photo of a {}.")[i] for i in labels]
    tidx = template_indices(0, 3, 0, n, len(pool), DistEnv())
    out = step(images, y, caps, tidx, 0.5, class_caps)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(
    ("freeze_text", "reg", "custom_captions"),
    [(False, "star", False), (True, "star", False), (False, "kl", False), (False, "star", True), (True, "none", False)],
)
def test_efficient_step_equals_straightforward(freeze_text, reg, custom_captions):
    labels = [0, 1, 1, 2, 3, 0, 2, 2]
    captions = [f"a picture of thing number {i}." for i in range(len(labels))] if custom_captions else None
    ref, ref_grads = _run("straightforward", freeze_text, reg, labels, captions)
    eff, eff_grads = _run("efficient", freeze_text, reg, labels, captions)
    assert eff.loss.item() == pytest.approx(ref.loss.item(), abs=1e-5)
    assert eff.reg.item() == pytest.approx(ref.reg.item(), abs=1e-5)
    if reg != "none":
        assert ref.reg.item() > 1e-4  # the regulariser is actually exercised
    assert set(eff_grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(eff_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    if freeze_text:
        assert not any(n.startswith("transformer.") or n == "token_embedding.weight" for n in eff_grads)


def test_template_draws_do_not_depend_on_process_count():
    whole = template_indices(7, 11, 0, 8, 58, DistEnv())
    halves = torch.cat([template_indices(7, 11, 0, 8, 58, DistEnv(rank=r, world_size=2)) for r in range(2)])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, template_indices(7, 12, 0, 8, 58, DistEnv()))


def test_spurious_bank_is_cached_by_teacher_classes_and_pool(starft_home):
    from starft_cli.models import weights_fingerprint
    from starft_cli.paths import cache_dir
    from starft_cli.train.bank import cached_bank

    loaded = load("starft-tiny:none")
    pool = ["{} at night.", "{} in the rain."]
    fp = weights_fingerprint(loaded.model)
    first = cached_bank(loaded.model, loaded.tokenizer, fp, CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    files = sorted(cache_dir("spurious_bank").glob("*.safetensors"))
    assert len(files) == 1 and first.spurious.shape == (4, 2, 32) and first.captions.shape == (4, 32)
    torch.testing.assert_close(first.spurious.norm(dim=-1), torch.ones(4, 2))
    again = cached_bank(loaded.model, loaded.tokenizer, fp, CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    assert torch.equal(again.spurious, first.spurious)  # read back exactly
    cached_bank(loaded.model, loaded.tokenizer, fp, CLASSES, "a photo of a {}.", pool[:1], torch.device("cpu"))
    cached_bank(loaded.model, loaded.tokenizer, "other-teacher", CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    assert len(list(cache_dir("spurious_bank").glob("*.safetensors"))) == 3
    files[0].write_bytes(b"damaged")
    rebuilt = cached_bank(loaded.model, loaded.tokenizer, fp, CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    torch.testing.assert_close(rebuilt.spurious, first.spurious)


def test_trimmed_text_encoding_equals_open_clip_encode_text():
    from starft_cli.train.text import encode_text

    loaded = load("starft-tiny:none")
    tokens = loaded.tokenizer(["a photo of a cat.", "a photo of a very small dog in the snow at night."])
    full = loaded.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encode_text(loaded.model, tokens), full, atol=1e-6, rtol=1e-5)


def test_text_features_for_a_bank_are_computed_in_eval_mode_and_modes_are_restored():
    """The student's own text tower can be a bank's source (FLYP with --freeze-text): with dropout it must not draw
    masks there, and the per-tower modes the loop set (a frozen tower in eval) must survive."""
    from starft_cli.train.bank import encode_texts

    loaded, student, _, _, _ = _setup(False)
    for m in student.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.5
    student.train()
    texts = ["a photo of a cat.", "a photo of a dog in snow."]
    a = encode_texts(student, loaded.tokenizer, texts, torch.device("cpu"))
    b = encode_texts(student, loaded.tokenizer, texts, torch.device("cpu"))
    assert torch.equal(a, b)
    assert all(m.training for m in student.modules())
    student.transformer.eval()  # as the loop does for a tower none of whose parameters train
    encode_texts(student, loaded.tokenizer, texts, torch.device("cpu"))
    assert student.training and student.visual.training and not student.transformer.training
    assert not any(m.training for m in student.transformer.modules())
