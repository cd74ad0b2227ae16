"""`starft pool discover`: the statistic against hand computations, the vocabulary, bad input, and shortcuts whose
truth is known (the demo benchmark's five backgrounds; a blur shortcut built differently)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.discover import (
    attribute_strengths,
    best_descriptions,
    class_free_shifts,
    group_alignment,
    load_vocabulary,
    phrase_template,
    ranking,
    vocabulary_names,
)
from starft_cli.errors import DataError, TemplateError
from tests.imagegen import make_class_folders

runner = CliRunner()
PLANTED = {  # the generator's truth: background k is the majority background of digit k (data/digits.py)
    "{} on red stripes.": "zero",
    "{} on green dots.": "one",
    "{} on blue checks.": "two",
    "{} on yellow waves.": "three",
    "{} on purple grid.": "four",
}


# ---------------------------------------------------------------------------------------------------------
# the statistic, by hand


def test_class_free_shifts_remove_the_class_directions_by_hand() -> None:
    e = torch.eye(4)
    captions = torch.stack([e[0], e[1]])  # class 0 along e0, class 1 along e1
    r = 1 / math.sqrt(2)
    spurious = torch.stack(
        [
            torch.stack([r * (e[0] + e[2]), r * (e[0] + e[1])]),  # class 0: + e2 ; restating class 1
            torch.stack([r * (e[1] + e[3]), e[1]]),  # class 1: + e3 ; nothing added
        ]
    )
    shifts = class_free_shifts(spurious, captions)
    # (e0 + e2)/sqrt2 - e0 = (1/sqrt2 - 1) e0 + e2/sqrt2 -> without e0, e1: e2/sqrt2
    assert torch.allclose(shifts[0, 0], torch.tensor([0.0, 0.0, r, 0.0]), atol=1e-6)
    assert torch.allclose(shifts[0, 1], torch.zeros(4), atol=1e-6)  # restates a class: adds nothing
    assert torch.allclose(shifts[1, 0], torch.tensor([0.0, 0.0, 0.0, r]), atol=1e-6)
    assert torch.allclose(shifts[1, 1], torch.zeros(4), atol=1e-6)


def test_with_more_classes_than_half_the_dimensions_only_the_main_class_directions_are_removed() -> None:
    e = torch.eye(4)
    captions = torch.stack([1.0 * e[0], 0.8 * e[1], 0.5 * e[2]])  # 3 classes in 4 dimensions, singular values 1, .8, .5
    added = 0.2 * e[0] + 0.3 * e[2] + 0.5 * e[3]
    spurious = (captions + added)[:, None, :]  # one attribute adding the same to every class
    shifts = class_free_shifts(spurious, captions)
    # 4 // 2 = 2 directions removed: the two main ones (e0, e1); e2 (the weakest class direction) and e3 stay
    for c in range(3):
        assert torch.allclose(shifts[c, 0], torch.tensor([0.0, 0.0, 0.3, 0.5]), atol=1e-6)


def test_best_descriptions_hold_the_class_fixed_by_hand() -> None:
    shifts = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],  # class 0's three attribute shifts
            [[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]],  # class 1's
        ]
    )
    x = torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, 0.2], [0.2, 1.0]])
    labels = np.array([0, 0, 1, 1])
    # image 0 (class 0): scores 1.0, 0.2, 0.6 -> 0; image 1: 0.2, 1.0, 0.6 -> 1;
    # image 2 (class 1): 0.2, 1.0, -1.2 -> 1; image 3: 1.0, 0.2, -1.2 -> 0
    assert best_descriptions(x, labels, shifts).tolist() == [0, 1, 1, 0]
    assert best_descriptions(x, labels, shifts, chunk=1).tolist() == [0, 1, 1, 0]


def test_attribute_strengths_against_a_hand_computation() -> None:
    # 8 images, classes 0 and 1 (4 each); attribute 0 carried by 3 of class 0 and 1 of class 1, attribute 1 the
    # reverse, attribute 2 by none.
    best = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = attribute_strengths(best, labels, num_attributes=3, num_classes=2)
    # P(a0) = 1/2, P(c0 | a0) = 3/4, P(c) = 1/2:
    # strength = 1/2 * (3/4 log2(3/2) + 1/4 log2(1/2)) = 1/2 * (0.4387218755 - 0.25) = 0.0943609378 bits
    assert s.strength[0] == pytest.approx(0.0943609378, abs=1e-9)
    assert s.strength[1] == pytest.approx(0.0943609378, abs=1e-9)
    assert s.strength[2] == 0.0
    # I(A; Y) = 1 - H(3/4) = 1 - 0.8112781245 = 0.1887218755 bits; H(Y) = 1 bit
    assert s.mutual_information == pytest.approx(0.1887218755, abs=1e-9)
    assert s.label_entropy == pytest.approx(1.0)
    assert s.marks.tolist() == [0, 1, -1]
    assert s.share.tolist() == [0.75, 0.75, 0.0]
    assert s.others.tolist() == [0.25, 0.25, 0.0]
    assert s.lift[:2].tolist() == [1.5, 1.5]
    assert s.counts.tolist() == [[3, 1], [1, 3], [0, 0]]
    assert ranking(s).tolist() == [0, 1]  # tie: vocabulary order; attribute 2 (never carried) left out


def test_an_attribute_every_class_carries_equally_has_strength_zero() -> None:
    best = np.array([0, 1, 0, 1, 0, 2])
    labels = np.array([0, 0, 1, 1, 2, 2])
    s = attribute_strengths(best, labels, 3, 3)
    # attribute 0: one image of each class -> P(Y | a0) = P(Y): 0 bits
    assert s.strength[0] == pytest.approx(0.0, abs=1e-12)
    # attribute 2: only class 2, P(a2) = 1/6 -> 1/6 * log2(1 / (1/3)) = 0.2641604168 bits
    assert s.strength[2] == pytest.approx(math.log2(3) / 6, abs=1e-12)
    assert ranking(s)[0] == 2


def test_one_class_is_refused() -> None:
    with pytest.raises(DataError, match="one class"):
        attribute_strengths(np.array([0, 1]), np.array([1, 1]), 2, 2)


def test_group_alignment_by_hand() -> None:
    best = np.array([0, 0, 0, 1, 0, 1])
    groups = np.array([0, 0, 1, 1, 2, 2])
    names = ["a on x", "a on y", "b on x"]
    out = group_alignment(best, groups, names, [0, 1])
    # attribute 0: group 0 2/2, group 1 1/2, group 2 1/2 (all >= 50%): most carrying images first
    assert [(m.group, m.images, m.share) for m in out[0]] == [
        ("a on x", 2, 1.0),
        ("a on y", 2, 0.5),
        ("b on x", 2, 0.5),
    ]
    assert [(m.group, m.share) for m in out[1]] == [("a on y", 0.5), ("b on x", 0.5)]


# ---------------------------------------------------------------------------------------------------------
# the vocabulary


def test_shipped_vocabulary_has_hundreds_of_phrases_the_planted_ones_and_distractors() -> None:
    vocab = load_vocabulary()
    assert vocabulary_names() == ["colours", "lighting", "patterns", "quality", "scenes", "style"]
    assert len(vocab) >= 290
    assert len(set(vocab.templates)) == len(vocab)
    assert all(t.count("{}") == 1 for t in vocab.templates)
    assert set(PLANTED) <= set(vocab.templates)
    for distractor in ("{} on red dots.", "{} on green stripes.", "{} on blue waves.", "{} on a red background.",
                       "{} in red ink.", "{} with a purple frame.", "a blurry photo of {}."):  # fmt: skip
        assert distractor in vocab.templates
    assert {vocab.categories[vocab.templates.index(t)] for t in PLANTED} == {"patterns"}


def test_phrase_lines_become_templates() -> None:
    assert phrase_template("on red stripes", "v", 1) == "{} on red stripes."
    assert phrase_template("  in  snowy   landscapes. ", "v", 1) == "{} in snowy landscapes."
    assert phrase_template("a blurry photo of {c}.", "v", 1) == "a blurry photo of {}."
    assert phrase_template("# a comment", "v", 1) is None
    assert phrase_template("   ", "v", 1) is None
    with pytest.raises(TemplateError, match="line 3"):
        phrase_template("{} and {}", "v", 3)


def test_user_vocabulary_adds_to_the_shipped_one_and_can_replace_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my shortcuts\non a hospital bed\non red stripes\nwith a ruler beside it\n")
    mine = load_vocabulary([path], shipped=False)
    assert mine.templates == ["{} on a hospital bed.", "{} on red stripes.", "{} with a ruler beside it."]
    assert mine.categories == ["mine"] * 3
    both = load_vocabulary([path])
    assert len(both) == len(load_vocabulary()) + 2  # on red stripes is shipped already
    assert both.templates[-1] == "{} with a ruler beside it."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no phrase"),
        ("# only a comment\n\n", "holds no phrase"),
        ("on a beach\n{} and {} twice\n", "line 2"),
        ("on a {beach\n", "line 1"),
    ],
)
def test_bad_vocabulary_files_are_one_line_errors(tmp_path: Path, class_folders: Path, content: str, message: str):
    path = tmp_path / "vocab.txt"
    path.write_text(content)
    done = runner.invoke(
        app,
        ["pool", "discover", "--data", f"folder:{class_folders}", "--model", "starft-tiny:none", "--vocab", str(path)],
    )
    assert done.exit_code == 1, done.output
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.output


def test_missing_vocabulary_file_is_a_one_line_error(tmp_path: Path, class_folders: Path) -> None:
    done = runner.invoke(
        app,
        ["pool", "discover", "--data", f"folder:{class_folders}", "--model", "starft-tiny:none", "--vocab",
         str(tmp_path / "nope.txt")],
    )  # fmt: skip
    assert done.exit_code == 1 and "no such vocabulary file" in done.stderr and done.stderr.count("\n") == 1


def test_a_split_with_one_class_is_a_one_line_error(tmp_path: Path) -> None:
    folder = make_class_folders(tmp_path / "one", ["cat"], per_class=3)
    done = runner.invoke(app, ["pool", "discover", "--data", f"folder:{folder}", "--model", "starft-tiny:none"])
    assert done.exit_code == 1, done.output
    assert "holds one class (cat)" in done.stderr and "at least two classes" in done.stderr
    assert done.stderr.count("\n") == 1


def test_discover_runs_end_to_end_on_a_tiny_model(tmp_path: Path, class_folders: Path) -> None:
    """Random weights find nothing meaningful, but every output is well formed and the pool file loads."""
    from starft_cli.prompts import load_pool

    vocab = tmp_path / "v.txt"
    vocab.write_text("on grass\non sand\non snow\nin fog\n")
    out = tmp_path / "found.txt"
    args = ["pool", "discover", "--data", f"folder:{class_folders}", "--model", "starft-tiny:none", "--vocab",
            str(vocab), "--no-shipped-vocab", "--workers", "0", "--top", "2"]  # fmt: skip
    done = runner.invoke(app, [*args, "--format", "json", "--out", str(out)])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["images"] == 12 and payload["vocabulary"] == 4 and len(payload["attributes"]) <= 2
    assert payload["mutual_information_bits"] <= payload["label_entropy_bits"] + 1e-9
    total = sum(a["strength_bits"] for a in payload["attributes"])
    assert total <= payload["mutual_information_bits"] + 1e-6
    pool = load_pool(str(out))
    assert pool == [a["template"] for a in payload["attributes"]]
    csv_out = runner.invoke(app, [*args, "--format", "csv"])
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0].startswith("rank,attribute,template,category")
    bad = runner.invoke(app, [*args, "--format", "xml"])
    assert bad.exit_code == 2


# ---------------------------------------------------------------------------------------------------------
# known shortcuts


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("discover_home")


@pytest.fixture
def demo_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One STARFT_HOME for the known-shortcut tests: the demo model is built once."""
    monkeypatch.setenv("STARFT_HOME", str(shared_home))
    return shared_home


@pytest.mark.slow
def test_demo_benchmark_top_five_are_the_planted_backgrounds(demo_home: Path, tmp_path: Path) -> None:
    """Precision at 5 against the generator's truth: the five planted backgrounds, each with its digit, among the
    shipped vocabulary (hundreds of phrases, colour x pattern distractors among them) plus phrases that restate a
    class."""
    from starft_cli.discover import discover
    from starft_cli.prompts import load_pool

    restating = tmp_path / "restating.txt"
    restating.write_text("{}, the digit zero.\n{} next to the number one.\nthe digit two, {}.\n")
    found = discover("starft-demo-zero-shot", "spurious-digits", split="train", vocab_files=[restating])
    top5 = {(f.template, f.classname) for f in found.top(5)}
    precision = len(top5 & set(PLANTED.items())) / 5
    assert precision == 1.0, [(f.template, f.classname, f.strength) for f in found.top(8)]
    assert found.num_images == 800 and found.vocabulary_size == len(load_vocabulary()) + 3
    assert found.findings[4].strength > 10 * found.findings[5].strength  # a clear gap after the planted five
    assert all(f.share > 0.9 for f in found.top(5))
    restated = [f for f in found.findings if f.category == "restating"]
    assert all(f.rank > 5 and f.strength < 0.01 for f in restated)
    # groups (digit x background): each planted background lines up first with its own majority group
    backgrounds = {"zero": "red stripes", "one": "green dots", "two": "blue checks", "three": "yellow waves",
                   "four": "purple grid"}  # fmt: skip
    for f in found.top(5):
        assert f.groups is not None and f.groups[0].group == f"{f.classname} on {backgrounds[f.classname]}"
        assert all(g.group.endswith(backgrounds[f.classname]) for g in f.groups)
    # the CLI: a table naming them, a pool file for --pool holding them first
    out = tmp_path / "pool.txt"
    done = runner.invoke(
        app, ["pool", "discover", "--data", "spurious-digits", "--model", "starft-demo-zero-shot", "--out", str(out),
              "--workers", "0"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "on red stripes" in done.stdout and "groups it lines up with" in done.stdout
    assert "features from the cache" in done.stdout  # the image tower ran once (above)
    assert set(load_pool(str(out))[:5]) == set(PLANTED)


@pytest.mark.slow
def test_a_blur_shortcut_built_differently_ranks_first(demo_home: Path, tmp_path: Path) -> None:
    """A second synthetic shortcut (image blur on 90% of the ones; tests/blurgen.py), with a zero-shot model
    pre-trained the demo's way: the planted attribute ranks first, marking the right class."""
    from starft_cli.discover import discover
    from tests import blurgen

    root = blurgen.write(tmp_path / "blur")
    model = blurgen.pretrain(root, tmp_path / "model")
    found = discover(str(model), f"csv:{root / 'train.csv'}")
    first = found.findings[0]
    assert (first.template, first.classname) == blurgen.PLANTED, [(f.template, f.classname) for f in found.top(5)]
    assert first.share >= 0.75  # of the 40 ones, 36 are blurry; 32 are read as blurry (measured)
    assert first.others < 0.05
    assert first.groups is not None and first.groups[0].group == "blurry one" and first.groups[0].share > 0.85
    assert all(g.group.startswith("blurry") for g in first.groups)


def test_quick_demo_trains_starft_on_the_discovered_pool(demo_home: Path, tmp_path: Path) -> None:
    """`starft demo --methods starft-discovered`: the pool is discovered in the train split, written beside the
    runs, and the run's config names that file."""
    from starft_cli.prompts import load_pool

    out = tmp_path / "demo"
    done = runner.invoke(app, ["demo", "--quick", "--methods", "starft-discovered", "--out", str(out), "--no-plot"])
    assert done.exit_code == 0, done.output
    assert "[demo] discovering the pool: running" in done.stderr
    pools = sorted((out / "runs").glob("discovered-pool-*.txt"))
    assert len(pools) == 1
    config = json.loads((out / "runs" / "starft-discovered-seed0" / "config.json").read_text())
    assert config["pool"] == str(pools[0]) and config["method"] == "starft"
    assert len(load_pool(str(pools[0]))) >= 1
    assert "starft-discovered: starft (lambda=1, schedule=constant, pool=" in done.stdout
