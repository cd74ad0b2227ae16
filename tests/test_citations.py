"""The papers' titles as the product cites them (issue 17, item 11): the method cards and the README."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
STARFT = "StarFT: Robust Fine-tuning of Zero-shot Models via Spuriosity Alignment"
# each method's paper: (title, venue), as the papers themselves give them
PAPERS = {
    "starft": (STARFT, "IJCAI 2025"),
    "kl": (STARFT, "IJCAI 2025"),
    "flyp": ("Finetune like you pretrain: Improved finetuning of zero-shot vision models", "CVPR 2023"),
    "ft": ("Robust fine-tuning of zero-shot models", "CVPR 2022"),
    "lp-ft": ("Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", "ICLR 2022"),
    "l2-sp": ("Explicit Inductive Bias for Transfer Learning with Convolutional Networks", "ICML 2018"),
    "lipsum-ft": ("Lipsum-FT: Robust Fine-Tuning of Zero-Shot Models Using Random Text Guidance", "ICLR 2024"),
    "car-ft": ("Context-Aware Robust Fine-Tuning", "IJCV 2024"),
    "carot": ("Towards Calibrated Robust Fine-Tuning of Vision-Language Models", "NeurIPS 2024"),
}


@pytest.mark.parametrize("method", sorted(PAPERS))
def test_method_cards_cite_the_papers_title_and_venue(method: str) -> None:
    from starft_cli.train.methods import get_method

    title, venue = PAPERS[method]
    source = get_method(method).source
    assert title in source and venue in source


def test_no_product_text_cites_the_wrong_starft_title() -> None:
    wrong = "Spurious Textual Alignment Regularization"
    texts = [ROOT / "README.md", *sorted((ROOT / "starft_cli").rglob("*.py")), *sorted((ROOT / "zoo").glob("*"))]
    assert [p for p in texts if p.is_file() and wrong in p.read_text(encoding="utf-8")] == []
    assert STARFT in (ROOT / "README.md").read_text(encoding="utf-8")
