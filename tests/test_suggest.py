"""The one "did you mean" helper (starft_cli/suggest.py) and the errors that use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from starft_cli.errors import ConfigError, DataError, ModelNotFoundError
from starft_cli.suggest import close_matches, did_you_mean


def test_close_names_best_first_then_the_rest_of_the_hint() -> None:
    known = ["cifar10", "cifar100", "mnist", "waterbirds"]
    assert close_matches("cifar1O", known) == ["cifar10", "cifar100"]
    assert did_you_mean("cifar1O", known, then="See `starft data list`") == (
        "Did you mean cifar10, cifar100? See `starft data list`"
    )
    assert did_you_mean("cifar1O", known) == "Did you mean cifar10, cifar100?"


def test_no_close_name_gives_the_rest_alone_or_nothing() -> None:
    assert did_you_mean("zzzz", ["cifar10", "mnist"], then="See the list") == "See the list"
    assert did_you_mean("zzzz", ["cifar10", "mnist"]) == ""
    assert (did_you_mean("zzzz", ["mnist"]) or "fallback") == "fallback"
    assert did_you_mean("x", []) == ""


def test_count_cutoff_and_quotes() -> None:
    known = ["epochs", "epoch_len", "eps"]
    assert did_you_mean("epoch", known, n=1, quote=True) == "Did you mean 'epochs'?"
    assert close_matches("epoch", known) == ["epochs", "epoch_len"]  # "eps" is too far (ratio 0.5 < 0.6)
    assert close_matches("epoch", known, n=1) == ["epochs"]
    assert close_matches("epoch", known, cutoff=0.5) == ["epochs", "epoch_len", "eps"]
    # a looser cutoff admits farther names
    assert close_matches("vit-b", ["ViT-B-16"], cutoff=0.6) == []
    assert close_matches("vit-b", ["ViT-B-16"], cutoff=0.3) == ["ViT-B-16"]
    # any iterable of names: a dict's keys, a generator
    assert did_you_mean("mnst", {"mnist": 1}) == "Did you mean mnist?"
    assert did_you_mean("mnst", (n for n in ["mnist"])) == "Did you mean mnist?"


def test_importing_the_helper_loads_nothing_heavy() -> None:
    code = "import sys, starft_cli.suggest; print(sorted(m for m in ('torch', 'numpy', 'typer') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _dataset(name: str) -> None:
    from starft_cli.data.registry import get_builder

    get_builder(name)


def _suite(name: str) -> None:
    from starft_cli.eval.suites import get_suite

    get_suite(name)


def _model(ref: str) -> None:
    from starft_cli.models import parse_model_ref

    parse_model_ref(ref)


def _zoo(name: str) -> None:
    from starft_cli.zoo import get_entry

    get_entry(name)


@pytest.mark.parametrize(
    ("call", "name", "error", "expected"),
    [
        (_dataset, "cifar1000", DataError, "unknown dataset 'cifar1000'. Did you mean cifar100, cifar10, cifar10.02? "),
        (
            _suite,
            "group-shfit",
            ConfigError,
            "unknown suite 'group-shfit'. Did you mean group-shift, zero-shot, domain-shift? Use one of ",
        ),
        (_model, "starft-tinny", ModelNotFoundError, "unknown model 'starft-tinny'. Did you mean starft-tiny"),
        (
            _model,
            "zoo:starft-demo-zero-sht",
            ModelNotFoundError,
            "zoo model 'starft-demo-zero-sht'. Did you mean starft-demo-zero-shot? See `",
        ),
        (
            _zoo,
            "starft-demo-zero-sht",
            ModelNotFoundError,
            "unknown zoo model 'starft-demo-zero-sht'. Did you mean starft-demo-zero-shot? See `",
        ),
        (_zoo, "qqqqqqqq", ModelNotFoundError, "unknown zoo model 'qqqqqqqq'. See `starft zoo list`"),
    ],
)
def test_unknown_names_suggest_the_close_ones(call, name: str, error: type[Exception], expected: str) -> None:
    with pytest.raises(error) as caught:
        call(name)
    assert expected in caught.value.one_line()


def test_only_the_shared_helper_computes_close_matches():
    """Issue 19.13: every did-you-mean goes through starft_cli.suggest (eval/metrics.py used to call difflib)."""
    import starft_cli

    package = Path(starft_cli.__file__).parent
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "difflib" in p.read_text("utf-8"))
    assert users == ["suggest.py"]
