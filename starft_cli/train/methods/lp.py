"""Linear probing on frozen image features."""

from __future__ import annotations

from starft_cli.train.methods import register
from starft_cli.train.methods.ft import FT


@register
class LinearProbe(FT):
    """Linear probe (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021, the LP evaluation; Kumar et al., ICLR 2022): cross-entropy on a linear head over the frozen image
    features. The head starts from the zero-shot head, so step 0 is the zero-shot classifier."""

    name = "lp"
    title = "linear probe: train only the zero-shot-initialised head on frozen image features"
    source = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    loss_doc = "L = CE(W f0(x), y) with the image tower f0 frozen; only W (zero-shot-initialised) trains"

    def trainable(self, name: str, stage: str) -> bool:
        return name.startswith("head.")
