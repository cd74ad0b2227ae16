"""Model soups and Model Stock: hand-computed small tensors, and the command on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import NonFiniteWeightsError, UsageError, WrongArchitectureError
from starft_cli.models import load, save_checkpoint
from starft_cli.wise import greedy_soup, model_stock, uniform_soup

runner = CliRunner()


def test_uniform_soup_is_the_mean_by_hand():
    runs = [
        {"w": torch.tensor([0.0, 3.0]), "n": torch.tensor([7])},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([7])},
        {"w": torch.tensor([6.0, 0.0]), "n": torch.tensor([7])},
    ]
    soup = uniform_soup(runs)
    assert torch.equal(soup["w"], torch.tensor([3.0, 3.0])) and torch.equal(soup["n"], torch.tensor([7]))
    with pytest.raises(WrongArchitectureError):
        uniform_soup([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(WrongArchitectureError, match="non-float"):
        uniform_soup([{"n": torch.tensor([1])}, {"n": torch.tensor([2])}])
    with pytest.raises(NonFiniteWeightsError):
        uniform_soup([{"w": torch.tensor([float("nan")])}, {"w": torch.tensor([1.0])}])
    with pytest.raises(UsageError):
        uniform_soup([])


def test_greedy_soup_adds_a_run_only_when_validation_does_not_drop():
    runs = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}, {"w": torch.tensor([10.0])}]

    def score(state):  # best at w = 2: run 1 scores -1, run 2 -1, run 3 -8; soup(1, 2) = 2 scores 0
        return -abs(float(state["w"]) - 2.0)

    soup, chosen, individual = greedy_soup(runs, score)
    assert individual == [-1.0, -1.0, -8.0]
    # equal scores: the later-listed run first (the reference sorts ascending, then reverses); run 3 would pull the
    # soup to 14/3 (score -2.67 < 0): left out
    assert chosen == [1, 0]
    assert torch.equal(soup["w"], torch.tensor([2.0]))


def test_greedy_soup_adds_a_run_only_when_validation_strictly_improves():
    runs = [{"w": torch.tensor([2.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([1.0])}]
    calls = []

    def score(state):
        calls.append(float(state["w"]))
        return -abs(float(state["w"]) - 2.0)

    soup, chosen, individual = greedy_soup(runs, score)
    assert individual == [0.0, 0.0, -1.0]
    # run 2 first (tie, later-listed); adding run 1 keeps the score at 0: not an improvement, left out; run 3 lowers it
    assert chosen == [1] and torch.equal(soup["w"], torch.tensor([2.0]))
    assert calls[3:] == [2.0, 1.5]  # the candidate soups tried after the three single runs


def test_model_stock_a_run_that_left_a_layer_unchanged_counts_as_orthogonal():
    w0 = {"a": torch.zeros(2)}
    runs = [{"a": torch.tensor([1.0, 0.0])}, {"a": torch.tensor([1.0, 1.0])}, {"a": torch.zeros(2)}]
    merged, ratios = model_stock(w0, runs)
    c = (1 / math.sqrt(2) + 0.0 + 0.0) / 3  # pairs with the unchanged run: cosine 0 (the reference's epsilon)
    t = 3 * c / (1 + 2 * c)
    assert ratios["a"] == pytest.approx(t)
    mean = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)  # the unchanged run stays in the mean
    assert torch.allclose(merged["a"].double(), t * mean, atol=1e-7)
    merged, ratios = model_stock(w0, [{"a": torch.zeros(2)}, {"a": torch.zeros(2)}])  # nobody moved it
    assert ratios["a"] == 0.0 and torch.equal(merged["a"], w0["a"])


def test_model_stock_two_runs_by_hand():
    w0 = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0, 1.0]), "n": torch.tensor([3])}
    w1 = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0, 1.0]), "n": torch.tensor([3])}
    w2 = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 1.0]), "n": torch.tensor([3])}
    merged, ratios = model_stock(w0, [w1, w2])
    # layer a: task vectors (1,0), (1,1): cos 45 degrees = 1/sqrt(2); t = 2c / (1 + c)
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    assert ratios["a"] == pytest.approx(t)
    expected = t * torch.tensor([1.0, 0.5], dtype=torch.float64)  # t * mean(w1, w2) + (1 - t) * 0
    assert torch.allclose(merged["a"].double(), expected, atol=1e-7)
    # layer b: run 2 left it unchanged (zero task vector): keep w0
    assert torch.equal(merged["b"], w0["b"]) and ratios["b"] == 0.0
    assert torch.equal(merged["n"], w0["n"])


def test_model_stock_three_runs_uses_the_mean_pairwise_cosine():
    w0 = {"a": torch.zeros(2)}
    runs = [{"a": torch.tensor([1.0, 0.0])}, {"a": torch.tensor([0.0, 1.0])}, {"a": torch.tensor([1.0, 1.0])}]
    merged, ratios = model_stock(w0, runs)
    c = (0.0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    t = 3 * c / (1 + 2 * c)
    assert ratios["a"] == pytest.approx(t)
    assert torch.allclose(merged["a"].double(), t * torch.tensor([2 / 3, 2 / 3], dtype=torch.float64), atol=1e-7)
    with pytest.raises(UsageError, match="at least two"):
        model_stock(w0, runs[:1])


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    base = load("starft-tiny:none", seed=0)
    folders = []
    torch.manual_seed(100)
    shared = {n: torch.randn_like(p) for n, p in base.model.named_parameters()}  # a direction all runs move in
    for seed in (1, 2, 3):
        model = load("starft-tiny:none", seed=0).model
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(0.01 * shared[name] + 0.01 * torch.randn_like(p))  # pairwise cosine about 1/2
        folder = tmp_path / f"run{seed}"
        save_checkpoint(model, folder, base.model_cfg, base.preprocess_cfg, arch="starft-tiny")
        folders.append(folder)
    return folders


def test_soup_command_writes_loadable_models(three_runs: list[Path], tmp_path: Path, class_folders: Path):
    runs = [a for f in three_runs for a in ("--run", str(f))]
    uniform = runner.invoke(app, ["soup", *runs, "--out", str(tmp_path / "u"), "--device", "cpu"])
    assert uniform.exit_code == 0, uniform.output
    states = [load(str(f)).model.state_dict() for f in three_runs]
    soup = load(str(tmp_path / "u")).model.state_dict()
    key = "visual.proj"
    assert torch.allclose(soup[key], sum(s[key] for s in states) / 3, atol=1e-6)
    stock = runner.invoke(
        app,
        ["soup", "--method", "model-stock", "--pretrained", "starft-tiny:none", *runs, "--out", str(tmp_path / "m")],
    )
    assert stock.exit_code == 0, stock.output
    # cos about 1/2 per layer: t = 3c / (1 + 2c) about 0.75
    assert 0.6 < json.loads(stock.stderr.strip().splitlines()[-1])["mean_t"] < 0.9
    greedy = runner.invoke(
        app,
        ["soup", "--method", "greedy", *runs, "--val-data", f"folder:{class_folders}", "--out", str(tmp_path / "g")],
    )
    assert greedy.exit_code == 0, greedy.output
    info = json.loads(greedy.stderr.strip().splitlines()[-1])
    assert set(info["val_top1"]) == {str(f) for f in three_runs} and info["chosen"][0] in info["val_top1"]
    best = max(info["val_top1"].values())
    assert info["val_top1"][info["chosen"][0]] == best
    assert (tmp_path / "g" / "open_clip_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "model-stock"], "needs the pre-trained model"),
        (["--method", "greedy"], "needs held-out ID validation data"),
        (["--method", "uniform", "--pretrained", "starft-tiny:none"], "--pretrained is for model-stock"),
        (["--method", "nosuch"], "unknown soup method"),
    ],
)
def test_soup_command_refuses_wrong_combinations(args: list[str], message: str, tmp_path: Path):
    result = runner.invoke(app, ["soup", "--run", "starft-tiny:none", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_batchnorm_step_counters_are_not_weights():
    """The demo model's image tower has BatchNorm: its integer step counters differ between runs."""
    from starft_cli.wise import wise

    zs = {"bn.weight": torch.tensor([1.0]), "bn.num_batches_tracked": torch.tensor(0)}
    ft = {"bn.weight": torch.tensor([3.0]), "bn.num_batches_tracked": torch.tensor(120)}
    other = {"bn.weight": torch.tensor([5.0]), "bn.num_batches_tracked": torch.tensor(240)}
    mid = wise(zs, ft, 0.5)
    assert torch.equal(mid["bn.weight"], torch.tensor([2.0])) and int(mid["bn.num_batches_tracked"]) == 120
    assert int(uniform_soup([ft, other])["bn.num_batches_tracked"]) == 120
    merged, _ = model_stock(zs, [ft, other])
    assert int(merged["bn.num_batches_tracked"]) == 120
    with pytest.raises(WrongArchitectureError, match="non-float tensor"):
        wise({"ids": torch.tensor([0, 1])}, {"ids": torch.tensor([1, 0])}, 0.5)  # other integers must agree
