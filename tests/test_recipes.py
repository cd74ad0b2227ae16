"""The paper recipes (configs/paper, ``--config paper:NAME``, ``--print-config``) and the options that make starft run
as the authors' code does: ``--wd-scope``, ``--last-batch``, ``--val-data holdout:FRACTION`` (model selection off the
reported splits), and the baselines as their authors run them (CaRot's cross term, Lipsum-FT's head, FLYP's
captions)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "starft-tiny:none", "--workers", "0", "--warmup", "2", "--lr", "1e-4", "--device", "cpu"]

# The StarFT authors' ImageNet run: scripts/train.sh and src/args.py of github.com/alinlab/StarFT (train.sh passes
# --epochs 10 --lr 1e-5 --wd 0.1 --batch-size 512 --reg-ratio 0.5 --diminishing --keep-lang; args.py's
# --warmup-length default is 500, --seed 0; main.py's AdamW decays every parameter; the CSV loader keeps the last
# partial batch; the captions are "a photo of a {class}.").
AUTHORS = {
    "method": "starft",
    "data": "imagenet",
    "split": "train",
    "epochs": 10,
    "lr": 1e-5,
    "wd": 0.1,
    "wd_scope": "all",
    "batch_size": 512,
    "last_batch": "keep",
    "warmup": 500,
    "seed": 0,
    "reg_lambda": 0.5,
    "lambda_schedule": "linear",
    "freeze_text": False,
    "caption_template": "a photo of a {}.",
    "grad_accum": 1,
    "val_data": None,  # no model selection: the last epoch
    "pool": "authors-background",
}


def _print_config(*args: str) -> dict:
    result = runner.invoke(app, ["finetune", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("recipe", "changes"),
    [
        ("starft-imagenet-vit-b16", {"backbone": "ViT-B-16"}),
        ("starft-imagenet-vit-l14", {"backbone": "ViT-L-14"}),
        ("flyp-imagenet-vit-b16", {"backbone": "ViT-B-16", "method": "flyp", "reg_lambda": 0.0, "pool": "background"}),
        ("flyp-imagenet-vit-l14", {"backbone": "ViT-L-14", "method": "flyp", "reg_lambda": 0.0, "pool": "background"}),
    ],
)
def test_print_config_of_a_paper_recipe_is_the_authors_run(recipe: str, changes: dict) -> None:
    config = _print_config("--config", f"paper:{recipe}")
    want = {**AUTHORS, **changes}
    assert {k: config[k] for k in want} == want
    assert config["config_file"] == f"paper:{recipe}"
    if changes.get("method") == "flyp":
        assert config["hparams"] == {"captions": "fixed"}  # the StarFT paper's FLYP: one caption per class
    # flags still win over the recipe, and the result is what a run would record
    openai = _print_config("--config", f"paper:{recipe}", "--backbone", "ViT-B-16:openai")
    assert openai["backbone"] == "ViT-B-16:openai"


def test_every_shipped_recipe_resolves_and_eval_recipes_are_suites() -> None:
    from starft_cli.eval.suites import get_suite
    from starft_cli.train.config import build_config
    from starft_cli.train.recipes import recipe_folder, recipe_names

    train, evals = recipe_names("finetune"), recipe_names("eval")
    assert len(train) == 9 and len(evals) == 3
    assert sorted(train + evals) == sorted(p.stem for p in recipe_folder().glob("*.toml"))
    for name in train:
        config = build_config(config_file=f"paper:{name}")
        assert (config.wd_scope, config.last_batch, config.lr, config.batch_size) == ("all", "keep", 1e-5, 512), name
    suite = get_suite("paper:eval-group-shift")
    (entry,) = suite.entries
    assert (entry.dataset, entry.split, entry.templates) == ("waterbirds", "test", "waterbirds")
    assert [e.dataset for e in get_suite("paper:eval-domain-shift").entries] == [
        "imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch",
    ]  # fmt: skip
    zero_shot = {e.dataset for e in get_suite("paper:eval-zero-shot").entries}
    assert zero_shot == {"caltech101", "stanford-cars", "flowers102"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "paper:starft-imagenet-vit-b1"], "Did you mean 'starft-imagenet-vit-b16'?"),
        (["--config", "paper:eval-group-shift"], "Use it as `starft eval --suite paper:eval-group-shift`"),
        (["--wd-scope", "none"], "--wd-scope 'none' is not one of open-clip, all"),
        (["--last-batch", "pad"], "--last-batch 'pad' is not one of drop, keep"),
        (["--last-batch", "keep", "--grad-accum", "2"], "--last-batch keep works with --grad-accum 1 only"),
        (["--val-data", "holdout:abc"], "--val-data 'holdout:abc': 'abc' is not a number"),
        (["--val-data", "holdout:0.9"], "the fraction must be in (0, 0.5] (got 0.9)"),
        (["--val-data", "holdout:0.1", "--val-split", "val"], "--val-split has no meaning with --val-data holdout"),
    ],
)
def test_bad_recipe_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["finetune", *args, "--print-config"])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_eval_suite_paper_recipe_from_the_cli() -> None:
    result = runner.invoke(app, ["eval", "-m", "starft-tiny:none", "--suite", "paper:eval-nope"])
    assert result.exit_code != 0 and "no paper recipe named 'eval-nope'" in result.output


# --- the last partial batch -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "world", "micro", "rule", "steps"),
    [
        (1_281_167, 1, 512, "keep", 2503),  # ImageNet-1k train at batch 512: the authors' epoch
        (1_281_167, 1, 512, "drop", 2502),
        (1_281_167, 8, 64, "keep", 2503),  # 8 processes x 64: the same global batches
        (1_281_167, 8, 64, "drop", 2502),
        (12, 1, 5, "keep", 3),
        (12, 1, 5, "drop", 2),
        (10, 1, 5, "keep", 2),  # no partial batch: both rules agree
        (10, 1, 5, "drop", 2),
    ],
)
def test_steps_per_epoch(n: int, world: int, micro: int, rule: str, steps: int) -> None:
    from starft_cli.train.schedules import steps_per_epoch

    assert steps_per_epoch(n, world, micro, 1, rule) == steps
    assert 10 * steps_per_epoch(1_281_167, 1, 512, 1, "keep") == 25_030
    assert 10 * steps_per_epoch(1_281_167, 1, 512, 1, "drop") == 25_020


def test_sampler_with_a_held_out_split_and_a_partial_batch_over_two_processes() -> None:
    from starft_cli.train.holdout import holdout_split
    from starft_cli.train.sampling import ResumableSampler

    labels = [i % 3 for i in range(30)]
    train, _ = holdout_split(labels, 0.2, seed=0)
    for epoch in range(3):
        shares = []
        for rank in range(2):
            sampler = ResumableSampler(30, 2, rank, seed=0, indices=train)
            sampler.set_position(epoch, 0)
            shares.append(list(sampler))
        assert len(shares[0]) == len(shares[1]) == 12  # 24 training samples, 12 a process
        assert sorted(shares[0] + shares[1]) == train  # every training sample once, no held-out sample
        resumed = ResumableSampler(30, 2, 1, seed=0, indices=train)
        resumed.set_position(epoch, 5)
        assert list(resumed) == shares[1][5:]  # a resume mid-epoch continues the same order


# --- weight decay scope -----------------------------------------------------------------------------------------
def test_which_parameters_decay_under_each_scope(tiny) -> None:
    from starft_cli.train.optim import decay_groups

    named = list(tiny.model.named_parameters())
    exempt, decayed = decay_groups(named, 0.1, "open-clip")
    ids = {id(p): n for n, p in named}
    exempt_names = {ids[id(p)] for p in exempt["params"]}
    decayed_names = {ids[id(p)] for p in decayed["params"]}
    assert (exempt["weight_decay"], decayed["weight_decay"]) == (0.0, 0.1)
    assert {"logit_scale", "ln_final.weight", "ln_final.bias", "visual.class_embedding"} <= exempt_names
    assert {"visual.proj", "text_projection", "positional_embedding", "token_embedding.weight"} <= decayed_names
    assert all(p.ndim >= 2 for p in decayed["params"]) and not exempt_names & decayed_names
    assert exempt_names | decayed_names == {n for n, _ in named}
    none, every = decay_groups(named, 0.1, "all")
    assert none["params"] == [] and [id(p) for p in every["params"]] == [id(p) for _, p in named]


# --- held-out validation ----------------------------------------------------------------------------------------
def test_holdout_split_is_disjoint_stratified_and_deterministic() -> None:
    from starft_cli.train.holdout import holdout_split

    labels = [0] * 10 + [1] * 20 + [2] * 1
    train, held = holdout_split(labels, 0.1, seed=3)
    assert not set(train) & set(held) and sorted(train + held) == list(range(31))
    assert [sum(labels[i] == c for i in held) for c in range(3)] == [1, 2, 0]  # round(0.1 n_c); a lone image trains
    assert holdout_split(labels, 0.1, seed=3) == (train, held)
    assert holdout_split(labels, 0.1, seed=4)[1] != held


def test_selection_warnings_name_reported_splits() -> None:
    from starft_cli.train.holdout import selection_warnings

    (imagenet,) = selection_warnings("imagenet", "val", "imagenet", "train")
    assert "selected on imagenet val, which the domain-shift, transfer suite(s) report" in imagenet
    assert "holdout:FRACTION" in imagenet
    assert selection_warnings("waterbirds", "val", "waterbirds", "train") == []  # its own validation split
    assert len(selection_warnings("waterbirds", "test", "waterbirds", "train")) == 1
    assert selection_warnings("holdout:0.02", None, "imagenet", "train") == []
    (itself,) = selection_warnings("folder:/x", "train", "folder:/x", "train")
    assert "training data itself" in itself
    (default,) = selection_warnings("waterbirds", None, None, None, what="the greedy soup")  # its default split: test
    assert default.startswith("the greedy soup is selected on waterbirds test, which the group-shift suite(s) report")


def test_greedy_soup_on_a_reported_split_warns(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["soup", "--method", "greedy", "--run", "starft-tiny:none", "--run", "starft-tiny:none", "--val-data",
              "imagenet", "--val-split", "val", "--data-root", str(tmp_path), "--out", str(tmp_path / "soup")],
    )  # fmt: skip
    assert "warning: the greedy soup is selected on imagenet val, which the domain-shift, transfer suite(s)" in (
        result.stderr
    )


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_with_the_authors_options(tmp_path: Path) -> None:
    """16 images, 4 held out (one per class), 12 trained on at batch 5 keeping the partial batch: 3 steps an epoch
    (5, 5, 2 images), 6 in all; the schedules run over those 6 steps and lambda decays per epoch."""
    from starft_cli.train.schedules import cosine_lr

    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car", "bus"], per_class=4)
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["finetune", *FAST, "--data", f"folder:{data}", "--batch-size", "5", "--epochs", "2", "--last-batch", "keep",
         "--wd-scope", "all", "--val-data", "holdout:0.25", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = [r for r in _metrics(run) if "loss" in r]
    assert [(r["step"], r["epoch"]) for r in steps] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1)]
    assert [r["lambda"] for r in steps] == [0.25, 0.25, 0.25, 0.0, 0.0, 0.0]
    assert [r["lr"] for r in steps] == pytest.approx([cosine_lr(s, 1e-4, 2, 6) for s in range(6)])
    vals = [r for r in _metrics(run) if "val_accuracy" in r]
    assert len(vals) == 2 and all(v["val_accuracy"] * 4 == round(v["val_accuracy"] * 4) for v in vals)  # 4 images
    config = json.loads((run / "config.json").read_text())
    assert (config["val_data"], config["last_batch"], config["wd_scope"]) == ("holdout:0.25", "keep", "all")
    state = torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert len(groups[0]["params"]) == 0 and groups[1]["weight_decay"] == 0.1  # --wd-scope all: nothing exempt
    assert "4 of the 16 training images are held out" in result.stderr


def test_partial_batch_and_holdout_resume_exactly(tmp_path: Path) -> None:
    """Killed at step 4 (mid-epoch 1, before its partial batch) and resumed: bitwise the uninterrupted run."""
    import signal
    import time

    from tests.test_train_resume import _cmd, _env, _state_step

    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car", "bus"], per_class=4)
    extra = ("--batch-size", "5", "--last-batch", "keep", "--val-data", "holdout:0.25", "--checkpoint-every", "2")
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(_cmd(data, full, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    victim = subprocess.Popen(
        _cmd(data, killed, *extra, stall_at=4), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while _state_step(killed) != 4:
        assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    state = torch.load(killed / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (4, 1, 1)
    resumed = subprocess.run(
        _cmd(data, killed, *extra, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(full / "checkpoints" / "last" / "open_clip_model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last" / "open_clip_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _metrics(full) if "loss" in r] == [r["loss"] for r in _metrics(killed) if "loss" in r]
    assert _state_step(killed) == 6


# --- baselines as their authors run them ------------------------------------------------------------------------
def test_fixed_scale_head_moves_logits_scale_times_more_per_adamw_step() -> None:
    from starft_cli.train.heads import make_head

    gen = torch.Generator().manual_seed(0)
    # float64: a logit change of ~1e-4 on logits of ~100 is below float32's resolution there
    unit = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=1)
    x = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen, dtype=torch.float64), dim=1)
    y = torch.randint(5, (16,), generator=gen)
    scale = 100.0
    fixed, trained = make_head(unit, scale), make_head(unit * scale)
    assert torch.allclose(fixed(x), trained(x), atol=1e-5)  # the same logits at initialisation
    moved = []
    for head in (fixed, trained):
        before = head(x).detach()
        opt = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=0.0)
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
        moved.append((head(x).detach() - before).abs().mean().item())
    assert moved[0] / moved[1] == pytest.approx(scale, rel=1e-3)
    assert torch.equal(fixed.effective_weight(), fixed.weight.detach() * scale)


def test_lipsum_ft_trains_the_unit_head_and_checkpoints_the_scaled_one(tmp_path: Path, class_folders: Path) -> None:
    from starft_cli.models import load

    run = tmp_path / "run"
    result = runner.invoke(
        app, ["finetune", *FAST, "--method", "lipsum-ft", "--data", f"folder:{class_folders}", "--batch-size", "4",
              "--epochs", "1", "--max-steps", "1", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scale = load("starft-tiny:none", seed=0).model.logit_scale.exp().item()
    trained = torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)["head"]
    saved = load_file(str(run / "checkpoints" / "last" / "classification_head.safetensors"))
    (weight,) = saved.values()
    assert trained.norm(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=5e-3)  # unit rows, one step moved
    assert torch.allclose(weight, trained * scale, rtol=1e-6, atol=0)
    assert math.isclose(scale, 1 / 0.07, rel_tol=1e-4)  # open_clip's initial exp(logit_scale)


def test_carot_follows_the_authors_command() -> None:
    from starft_cli.train.methods import make_method

    assert make_method("carot").hp["lambda_cross"] == 0.05  # README / example_scripts/carot.sh: --cross_fnorm 0.05
    assert make_method("carot", {"lambda_cross": 0}).hp["lambda_cross"] == 0.0  # the paper's objective


def test_flyp_caption_recipes(tmp_path: Path, class_folders: Path) -> None:
    from starft_cli.train.methods import RunContext, make_method
    from starft_cli.train.methods.flyp import template_choice

    fixed, drawn = make_method("flyp"), make_method("flyp", {"captions": "templates"})
    assert (fixed.own_captions, drawn.own_captions) == (False, True)
    ctx = RunContext(None, None, None, None, ["cat", "dog"], ["a photo of a {}.", "a sketch of a {}."], "cpu", None, 7)
    index, labels = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1])
    assert fixed.captions(ctx, 0, index, labels) is None
    caps = drawn.captions(ctx, 5, index, labels)
    assert caps == [ctx.templates[template_choice(7, 5, i, 2)].replace("{}", ["cat", "dog"][i % 2]) for i in range(4)]
    assert caps == drawn.captions(ctx, 5, index, labels)  # a function of (seed, step, sample): exact on resume
    draws = [template_choice(0, s, i, 2) for s in range(50) for i in range(4)]
    assert 0.35 < sum(draws) / len(draws) < 0.65  # both templates drawn
    losses = []
    for captions in ("fixed", "templates"):
        run = tmp_path / captions
        result = runner.invoke(
            app, ["finetune", *FAST, "--method", "flyp", "--hp", f"captions={captions}", "--data",
                  f"folder:{class_folders}", "--batch-size", "4", "--epochs", "1", "--out", str(run)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads((run / "config.json").read_text())["hparams"] == {"captions": captions}
        losses.append([r["loss"] for r in _metrics(run) if "loss" in r])
    assert losses[0] != losses[1]  # other captions, another objective


def test_ddp_global_batches_are_the_one_process_batches_with_a_partial_last_one() -> None:
    """Under 2 processes (micro 3, global batch 6) each step's global batch is the one-process run's batch; the
    partial last batch holds the 3 remaining samples plus 1 pad (the permutation's first sample)."""
    from starft_cli.train.sampling import ResumableSampler
    from starft_cli.train.schedules import steps_per_epoch

    train = list(range(0, 30, 2))  # 15 training indices (a held-out split's training part)
    one = ResumableSampler(30, 1, 0, seed=5, indices=train)
    one.set_position(1, 0)
    order = list(one)
    shares = []
    for rank in range(2):
        sampler = ResumableSampler(30, 2, rank, seed=5, indices=train)
        sampler.set_position(1, 0)
        shares.append(list(sampler))
    steps = steps_per_epoch(15, 2, 3, 1, "keep")
    assert steps == 3 and steps_per_epoch(15, 2, 3, 1, "drop") == 2
    batches = [sorted(shares[0][3 * s : 3 * s + 3] + shares[1][3 * s : 3 * s + 3]) for s in range(steps)]
    assert batches[:2] == [sorted(order[0:6]), sorted(order[6:12])]
    assert batches[2] == sorted([*order[12:15], order[0]])


@pytest.mark.slow
def test_torchrun_two_processes_keep_the_partial_batch_and_hold_out(tmp_path: Path) -> None:
    import os
    import shutil
    import socket
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=6)  # 18 images, 3 held out
    run = tmp_path / "run"
    cmd = [
        torchrun, "--nproc-per-node", "2", "--master-port", str(port), "-m", "starft_cli", "finetune", *FAST,
        "--data", f"folder:{data}", "--batch-size", "6", "--epochs", "2", "--last-batch", "keep",
        "--val-data", "holdout:0.2", "--wd-scope", "all", "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps = [r for r in _metrics(run) if "loss" in r]
    assert [(r["step"], r["epoch"], r["lambda"]) for r in steps] == [
        (1, 0, 0.25), (2, 0, 0.25), (3, 0, 0.25), (4, 1, 0.0), (5, 1, 0.0), (6, 1, 0.0),
    ]  # fmt: skip
    vals = [r["val_accuracy"] for r in _metrics(run) if "val_accuracy" in r]
    assert len(vals) == 2 and all(round(3 * v) == 3 * v for v in vals)  # the 3 held-out images, over 2 processes
