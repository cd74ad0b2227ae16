"""The evaluation engine, suites and `starft eval` end to end, on generated layouts and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import ImageError, UsageError
from tests.layouts import LAYOUTS

runner = CliRunner()
TINY = "starft-tiny:none"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every benchmark's layout under one data root (read-only for the tests)."""
    root = tmp_path_factory.mktemp("data")
    for make in LAYOUTS.values():
        make(root)
    return root


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved copy of the tiny model with perturbed weights (a second, different model)."""
    import torch

    from starft_cli.models import load, save_checkpoint

    loaded = load(TINY)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    folder = tmp_path_factory.mktemp("models") / "perturbed"
    save_checkpoint(loaded.model, folder, loaded.model_cfg, loaded.preprocess_cfg, arch="starft-tiny")
    return folder


def _records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------------------------


def test_feature_cache_is_reused_and_invalidated(tiny, tmp_path: Path):
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from starft_cli.models import load
    from tests.imagegen import make_class_folders, make_image

    root = make_class_folders(tmp_path / "f", ["a", "b"], per_class=3, size=(32, 32))
    ds = load_dataset(f"folder:{root}")
    first = compute_features(tiny, ds)
    again = compute_features(tiny, ds)
    assert not first.from_cache and again.from_cache
    assert first.features.shape == (6, 32)
    assert np.allclose(first.features.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert np.array_equal(first.features.numpy(), again.features.numpy())

    other_weights = load(TINY, seed=1)
    assert not compute_features(other_weights, ds).from_cache  # weights changed

    make_image(root / "a" / "0.jpg", seed=99, size=(32, 32), color=(0, 0, 0))  # data changed
    changed = load_dataset(f"folder:{root}")
    fresh = compute_features(tiny, changed)
    assert not fresh.from_cache
    assert not np.allclose(fresh.features[0].numpy(), first.features[0].numpy())
    assert np.allclose(fresh.features[1:].numpy(), first.features[1:].numpy(), atol=1e-6)


def test_features_match_a_plain_encode(tiny, tmp_path: Path):
    """Cached features are the model's normalised image features of the preprocessed images."""
    import torch

    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["a", "b"], per_class=2, size=(32, 32))
    ds = load_dataset(f"folder:{root}")
    ours = compute_features(tiny, ds, batch_size=3).features
    with torch.inference_mode():
        batch = torch.stack([tiny.preprocess(ds.get_image(i)) for i in range(len(ds))])
        plain = tiny.model.encode_image(batch, normalize=True)
    assert torch.allclose(ours, plain, atol=1e-5)


def test_corrupt_image_is_skipped_and_counted(tiny, tmp_path: Path):
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["cat", "dog"], per_class=3, size=(32, 32))
    victim = root / "dog" / "1.jpg"
    victim.write_bytes(victim.read_bytes()[:50])
    suite = Suite("custom", (SuiteEntry(f"folder:{root}", ("top1",)),))
    result = evaluate([tiny], suite, None)
    row = result.frame.iloc[0]
    assert (row["num_samples"], row["num_skipped"]) == (5, 1)
    assert len(result.skipped) == 1 and "1.jpg" in result.skipped[0]
    with pytest.raises(ImageError, match=r"1\.jpg"):
        evaluate([tiny], suite, None, strict=True)


def test_imagenet_r_logits_are_restricted_to_the_present_classes(tiny, data_root: Path):
    import torch

    from starft_cli.eval.runner import evaluate, logits_for

    features = torch.eye(3, 4)
    head = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    assert logits_for(features, head, [1, 3]).tolist() == [[4.0, 12.0], [5.0, 13.0], [6.0, 14.0]]

    frame = evaluate([tiny], "domain-shift", data_root, templates="single").frame  # one template: a fast head
    r = frame[frame["dataset"] == "imagenet-r"].set_index("metric")
    assert r.loc["top1", "num_classes"] == 2  # the two wnid folders present, out of 1000 head rows
    assert "top5" not in r.index  # fewer than 5 classes once restricted: absent, not NaN
    assert frame[frame["dataset"] == "imagenet"].set_index("metric").loc["top5", "num_classes"] == 1000


def test_layout_is_checked_before_any_model_is_loaded(tmp_path: Path):
    (tmp_path / "broken.safetensors").write_bytes(b"not weights")  # loading this model would fail
    LAYOUTS["waterbirds"](tmp_path)
    (tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv").unlink()
    model = str(tmp_path / "broken.safetensors")
    result = runner.invoke(app, ["eval", "--suite", "group-shift", "-m", model, "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "waterbirds (missing" in result.stderr and "metadata.csv" in result.stderr
    assert "pacs (missing folder" in result.stderr  # every missing dataset is named, with where it belongs
    assert "starft data check NAME" in result.stderr
    assert "weights" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Suites end to end through `starft eval`
# ---------------------------------------------------------------------------------------------------------------


def test_group_shift_two_models_leaderboard_and_files(data_root: Path, perturbed: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["eval", "--suite", "group-shift", "-m", TINY, "-m", str(perturbed), "--data-root", str(data_root)]
    result = runner.invoke(app, [*args, "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "waterbirds", "top1"]
    assert "waterbirds worst_group_acc" in lines[0] and "cifar10.02 worst_group_acc" in lines[0]
    rows = [line for line in lines if line.startswith((TINY, str(perturbed)))]
    assert len(rows) == 2
    assert "(" not in rows[0]  # the baseline has no deltas
    assert "(+" in rows[1] or "(-" in rows[1]
    assert "sample-weighted" in result.stdout  # how "average" is computed is stated

    records = _records(out)
    keys = {(r["model"], r["dataset"], r["metric"]) for r in records}
    for model in (TINY, str(perturbed)):
        for ds in ("waterbirds", "pacs", "cifar10.02"):
            assert {(model, ds, "top1"), (model, ds, "worst_group_acc"), (model, ds, "ece")} <= keys
    wb = {r["metric"]: r for r in records if r["model"] == TINY and r["dataset"] == "waterbirds"}
    groups = [r["value"] for m, r in wb.items() if m.startswith("group_acc[")]
    assert len(groups) == 4 and wb["worst_group_acc"]["value"] == pytest.approx(min(groups))
    assert wb["top1"]["num_samples"] == 8 and wb["top1"]["split"] == "test"
    for field in ("weights_fingerprint", "data_fingerprint", "seed", "date", "torch_version", "open_clip_version"):
        assert field in wb["top1"]
    fingerprints = {r["model"]: r["weights_fingerprint"] for r in records}
    assert fingerprints[TINY] != fingerprints[str(perturbed)]
    assert (out / "leaderboard.md").read_text().startswith("| model")
    csv_header = (out / "leaderboard.csv").read_text().splitlines()[0]
    assert csv_header.startswith("model,waterbirds top1,") and "waterbirds top1 delta" in csv_header


def test_rerun_replaces_only_identical_records(data_root: Path, perturbed: Path, tmp_path: Path):
    out = tmp_path / "out"
    base = ["eval", "--data", "pacs", "--data-root", str(data_root), "--out", str(out), "--workers", "0"]
    assert runner.invoke(app, [*base, "-m", TINY]).exit_code == 0
    first = _records(out)
    assert runner.invoke(app, [*base, "-m", str(perturbed)]).exit_code == 0
    both = _records(out)
    assert len(both) == 2 * len(first)
    again = runner.invoke(app, [*base, "-m", TINY])
    assert again.exit_code == 0
    assert f"{len(first)} earlier record(s) replaced" in again.stderr
    final = _records(out)
    assert len(final) == len(both)
    assert [r for r in final if r["model"] == str(perturbed)] == [r for r in both if r["model"] == str(perturbed)]


@pytest.mark.parametrize(
    ("suite", "datasets"),
    [
        ("domain-shift", {"imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch"}),
        ("zero-shot", {"cifar10", "cifar100", "caltech101", "stl10"}),
        ("transfer", {"caltech101", "stanford-cars", "flowers102", "imagenet", "iwildcam", "fmow"}),
    ],
)
def test_suites_end_to_end(suite: str, datasets: set[str], data_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["eval", "--suite", suite, "-m", TINY, "--data-root", str(data_root), "--out", str(out), "--workers", "0"]
    # one template keeps ImageNet's 1000-class head fast on CPU
    result = runner.invoke(app, [*args, "--format", "md", "--templates", "single"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert {r["dataset"] for r in records} == datasets
    assert all(0.0 <= r["value"] <= 1.0 for r in records)
    assert {"leaderboard.md", "leaderboard.csv", "results.json"} <= {p.name for p in out.iterdir()}
    if suite == "domain-shift":
        assert "avg OOD top1" in result.stdout
    if suite == "transfer":
        metrics = {(r["dataset"], r["metric"]) for r in records}
        assert {("iwildcam", "macro_f1"), ("fmow", "worst_region_acc"), ("fmow", "region_acc[Europe]")} <= metrics
        fmow = {r["metric"]: r["value"] for r in records if r["dataset"] == "fmow"}
        regions = {m: v for m, v in fmow.items() if m.startswith("region_acc[") and m != "region_acc[Other]"}
        assert "region_acc[Other]" in fmow and len(regions) == 3
        assert fmow["worst_region_acc"] == pytest.approx(min(regions.values()))  # "Other" left out, as in WILDS


def test_suite_all_runs_what_is_present_and_says_what_is_missing(tmp_path: Path):
    LAYOUTS["waterbirds"](tmp_path)
    LAYOUTS["cifar10"](tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["eval", "--suite", "all", "-m", TINY, "--data-root", str(tmp_path), "--out", str(out), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert {r["dataset"] for r in _records(out)} == {"waterbirds", "cifar10"}
    assert f"skipped (not present): pacs: missing folder {tmp_path / 'PACS'}" in result.stderr
    assert "imagenet-r: missing folder" in result.stderr and "Source:" in result.stderr
    assert "not evaluated: stl10" in (out / "leaderboard.md").read_text()
    # each missing dataset once, on one line of its own (stderr); stdout names them all in one line
    missing = [line for line in result.stderr.splitlines() if line.startswith("skipped (not present): ")]
    names = [line.split(": ")[1] for line in missing]
    assert len(names) == len(set(names)) == 14 and "pacs" in names and "waterbirds" not in names
    assert all(result.stderr.count(f"skipped (not present): {n}:") == 1 for n in names)
    summary = [line for line in result.stdout.splitlines() if "dataset(s) not present" in line]
    assert len(summary) == 1 and "14 dataset(s) not present (listed on stderr): " in summary[0]
    assert "Source:" not in result.stdout


def test_user_suite_file(data_root: Path, tmp_path: Path):
    (tmp_path / "names.txt").write_text("red thing\ngreen thing\n")
    folder = tmp_path / "mine"
    from tests.imagegen import make_class_folders

    make_class_folders(folder, ["r", "g"], per_class=2, size=(32, 32))
    suite = tmp_path / "suite.toml"
    suite.write_text(
        'name = "my-suite"\n'
        '[[datasets]]\nname = "waterbirds"\nmetrics = ["worst_group_acc", "macro_f1"]\nsplit = "val"\n'
        '[[datasets]]\nname = "folder:mine"\nclassnames = "names.txt"\ntemplates = "single"\nmetrics = ["top1"]\n'
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["eval", "--suite", str(suite), "-m", TINY, "--data-root", str(data_root), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    records = _records(out)
    got = {(r["dataset"], r["metric"], r.get("split")) for r in records if "[" not in r["metric"]}
    assert got == {
        ("waterbirds", "worst_group_acc", "val"),
        ("waterbirds", "macro_f1", "val"),
        (f"folder:{folder}", "top1", "test"),
    }
    assert all(r["suite"] == "my-suite" for r in records)


def test_data_option_with_classnames_and_templates(tmp_path: Path):
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "mine", ["r", "g", "b"], per_class=2, size=(32, 32))
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    result = runner.invoke(
        app,
        [
            "eval",
            "--data",
            f"folder:{root}",
            "--classnames",
            str(tmp_path / "names.txt"),
            "--templates",
            "single",
            "-m",
            TINY,
            "--format",
            "json",
            "--metric",
            "top1",
            "--metric",
            "macro_f1",
        ],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert {r["metric"] for r in records} == {"top1", "macro_f1"}
    assert records[0]["num_classes"] == 3 and records[0]["templates"] == "single"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", TINY], "exactly one of --suite and --data"),
        (["-m", TINY, "--suite", "group-shfit"], "Did you mean group-shift"),
        (["-m", TINY, "--suite", "zero-shot", "--classnames", "x.txt"], "apply to --data"),
        (["-m", TINY, "--data", "pacs", "--format", "xml"], "unknown format 'xml'"),
        (["-m", TINY, "--data", "pacs", "--metric", "f2"], "unknown metric 'f2'"),
        (["-m", TINY, "--data", "pacs", "--split", "train"], "dataset 'pacs' has no split 'train'"),
    ],
)
def test_eval_usage_errors(args: list[str], message: str, tmp_path: Path):
    result = runner.invoke(app, ["eval", *args, "--data-root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_missing_data_of_a_named_suite_is_an_error(tmp_path: Path):
    LAYOUTS["pacs"](tmp_path)
    result = runner.invoke(app, ["eval", "--suite", "group-shift", "-m", TINY, "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "2 dataset(s) of suite 'group-shift' are missing" in result.stderr
    assert "--suite all" in result.stderr


def test_evaluate_python_api(tiny, data_root: Path):
    from starft_cli.eval import evaluate

    result = evaluate([tiny], "group-shift", data_root)
    assert set(result.frame["dataset"]) == {"waterbirds", "pacs", "cifar10.02"}
    assert result.missing == [] and result.suite.name == "group-shift"
    with pytest.raises(UsageError, match="needs `data_root`"):
        evaluate([tiny], "group-shift", None)


def test_eval_result_and_plans(tiny, tmp_path: Path):
    """evaluate() returns an EvalResult (records, suite, missing, skipped, notes); a Plan is run by evaluate_plan(),
    and evaluate() refuses one rather than ignoring its data options."""
    from starft_cli.eval.runner import EvalResult, evaluate, evaluate_plan, plan
    from starft_cli.eval.suites import Suite, SuiteEntry
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["cat", "dog", "car"], per_class=2, size=(32, 32))
    suite = Suite("custom", (SuiteEntry(f"folder:{root}", ("top1", "top5")),), "my suite")
    result = evaluate(tiny, suite)
    assert isinstance(result, EvalResult)
    assert result.suite is suite and result.missing == result.missing_names == result.skipped == []
    assert result.notes == [f"folder:{root}: top5 not computed (top5 needs at least 5 classes and folder:{root} has 3)"]
    assert list(result.frame["metric"]) == ["top1"]
    (record,) = result.records
    assert record["metric"] == "top1" and record["num_samples"] == 6 and record["suite"] == "custom"
    assert result.value(f"folder:{root}", "top1") == record["value"]
    with pytest.raises(KeyError, match="0 records of ece"):
        result.value(f"folder:{root}", "ece")

    prepared = plan(suite, None)
    again = evaluate_plan([tiny], prepared)
    assert again.frame["value"].tolist() == result.frame["value"].tolist() and again.notes == result.notes
    with pytest.raises(UsageError, match="not a Plan") as info:
        evaluate([tiny], prepared, None, templates="single")  # the plan's templates are fixed: not ignored silently
    assert "evaluate_plan" in info.value.one_line()
    with pytest.raises(UsageError, match="no model to evaluate"):
        evaluate([], suite)


def test_cli_warns_about_skipped_images_and_strict_fails(tmp_path: Path):
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["cat", "dog"], per_class=2, size=(32, 32))
    (root / "cat" / "0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: starft-tiny:none on folder:" in result.stderr and "1 unreadable image(s) skipped" in result.stderr
    assert "1 unreadable image(s) skipped" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert _records(tmp_path / "out")[0]["num_skipped"] == 1
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1
    assert "0.jpg" in strict.stderr and "without --strict" in strict.stderr


def test_evaluation_checks_only_the_split_it_reads(tiny, tmp_path: Path):
    from starft_cli.eval.runner import evaluate
    from tests.layouts import make_imagenet

    make_imagenet(tmp_path)
    (tmp_path / "imagenet" / "train" / "not-a-wnid").mkdir()  # a broken training set does not block evaluation
    frame = evaluate([tiny], _suite("imagenet", "val"), tmp_path, templates="single").frame
    assert set(frame["dataset"]) == {"imagenet"}
    from starft_cli.data.manage import check_dataset

    assert not check_dataset("imagenet", tmp_path).ok  # `starft data check` still checks every split


def _suite(dataset: str, split: str):
    from starft_cli.eval.suites import Suite, SuiteEntry

    return Suite("custom", (SuiteEntry(dataset, ("top1",), split=split),))


def test_a_second_head_over_the_same_images_reuses_the_features(tiny, data_root: Path, starft_home: Path):
    from starft_cli.eval.runner import evaluate

    first = evaluate([tiny], _suite("pacs", "test"), data_root, templates="single").frame
    second = evaluate([tiny], _suite("pacs", "test"), data_root, templates="ensemble").frame
    assert len(list((starft_home / "cache" / "features").glob("*.safetensors"))) == 1  # computed once
    assert len(list((starft_home / "cache" / "heads").glob("*.safetensors"))) == 2  # one head per template set
    assert first["templates"].iloc[0] == "single" and second["templates"].iloc[0] == "ensemble"


def test_reduced_scale_decoding_is_opt_in_and_cached_apart(tiny, tmp_path: Path):
    """Full decoding is the default (the standard pipeline's pixels); --fast-decode decodes large JPEGs at a
    reduced DCT scale (>= 2x the input size): features barely move, and a fast entry of the feature cache is never
    used for an exact evaluation (nor the reverse)."""
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "big", ["a", "b"], per_class=2, size=(320, 256))
    ds = load_dataset(f"folder:{root}")
    fast = compute_features(tiny, ds, fast_decode=True)
    full = compute_features(tiny, ds)
    assert not fast.from_cache and not full.from_cache  # two cache entries, one per decode mode
    assert compute_features(tiny, ds).from_cache and compute_features(tiny, ds, fast_decode=True).from_cache
    import torch

    plain = torch.stack([tiny.preprocess(ds.get_image(i)) for i in range(len(ds))])
    with torch.inference_mode():
        exact = torch.nn.functional.normalize(tiny.model.encode_image(plain).float(), dim=-1)
    assert torch.allclose(full.features, exact, atol=1e-5)  # the default is the plain, full-decode pipeline
    assert not torch.equal(fast.features, full.features)
    cosine = (fast.features * full.features).sum(dim=-1)
    assert cosine.min().item() > 0.99


def test_cli_decodes_in_full_by_default_and_records_the_decode_mode(tmp_path: Path):
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["cat", "dog"], per_class=2, size=(300, 260))
    args = ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--metric", "top1"]
    full = runner.invoke(app, [*args, "--out", str(tmp_path / "full")])
    fast = runner.invoke(app, [*args, "--out", str(tmp_path / "fast"), "--fast-decode"])
    assert full.exit_code == 0 and fast.exit_code == 0, full.output + fast.output
    assert [r["decode"] for r in _records(tmp_path / "full")] == ["full"]
    assert [r["decode"] for r in _records(tmp_path / "fast")] == ["fast"]


# ---------------------------------------------------------------------------------------------------------------
# Metrics that do not apply (issue 9, item 8): an error before any model runs, or a stated note; never dropped
# ---------------------------------------------------------------------------------------------------------------


def _pets(tmp_path: Path) -> Path:
    from tests.imagegen import make_class_folders

    return make_class_folders(tmp_path / "pets", ["cat", "dog", "bird"], per_class=2, size=(32, 32))


def _no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the metric check")

    monkeypatch.setattr("starft_cli.models.load", boom)


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        (["top5"], "metric top5 does not apply to folder:"),
        (["worst_group_acc"], "metric worst_group_acc does not apply to folder:"),
        (["mean_group_acc", "top1"], "metric mean_group_acc does not apply to folder:"),
    ],
)
def test_a_metric_that_does_not_apply_is_a_one_line_error(
    metrics: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _no_model_load(monkeypatch)
    args = ["eval", "--data", f"folder:{_pets(tmp_path)}", "-m", TINY]
    for name in metrics:
        args += ["--metric", name]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output and "KeyError" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "metrics that apply: top1" in result.stderr
    if metrics == ["top5"]:
        assert "top5 needs at least 5 classes" in result.stderr and "has 3" in result.stderr
    else:
        assert "needs groups" in result.stderr


def test_default_metrics_that_do_not_apply_are_noted(tmp_path: Path):
    """The default --data metrics (top1, top5, ece) on 3 classes: top5 is left out with a note in the report."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--data", f"folder:{_pets(tmp_path)}", "-m", TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: folder:" in result.stderr and "top5 not computed (top5 needs at least 5 classes" in result.stderr
    assert "top5 not computed" in result.stdout and "top5 not computed" in (out / "leaderboard.md").read_text()
    assert {r["metric"] for r in _records(out)} == {"top1", "ece"}


def test_every_metric_has_a_rule_and_every_kept_metric_is_reported(tiny, data_root: Path):
    from starft_cli.eval.metrics import METRICS
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    names = ("top1", "top5", "ece", "mean_per_class_recall", "macro_f1", "mean_group_acc", "worst_group_acc")
    names += ("worst_region_acc", "adjusted_avg_acc")
    assert set(names) == set(METRICS)
    on_waterbirds = tuple(m for m in names if m not in ("top5", "worst_region_acc"))  # 2 classes, groups not regions
    suite = Suite(
        "s",
        (
            SuiteEntry("waterbirds", on_waterbirds, explicit=True),
            SuiteEntry("fmow", ("top5", "worst_region_acc"), explicit=True),
        ),
    )
    frame = evaluate([tiny], suite, data_root).frame
    assert set(on_waterbirds) <= set(frame.loc[frame["dataset"] == "waterbirds", "metric"])
    assert {"top5", "worst_region_acc"} <= set(frame.loc[frame["dataset"] == "fmow", "metric"])


def test_worst_region_acc_on_groups_that_are_not_regions_is_an_error(tiny, data_root: Path):
    """Waterbirds has groups (label x place) but no regions: a requested worst_region_acc is an error naming why,
    before any model is loaded; in a built-in suite it would be left out with a note."""
    from starft_cli.eval.runner import evaluate, plan
    from starft_cli.eval.suites import Suite, SuiteEntry

    suite = Suite("s", (SuiteEntry("waterbirds", ("top1", "worst_region_acc"), explicit=True),))
    with pytest.raises(UsageError) as info:
        evaluate([tiny], suite, data_root)
    line = info.value.one_line()
    assert "worst_region_acc needs regions and the groups of waterbirds (test split) are not regions" in line
    assert "worst_group_acc" in line  # the metrics that do apply
    implicit = plan(Suite("s", (SuiteEntry("waterbirds", ("top1", "worst_region_acc")),)), data_root)
    assert implicit.datasets[0].metrics == ("top1",)
    assert implicit.notes == [
        "waterbirds: worst_region_acc not computed (worst_region_acc needs regions and the groups of waterbirds "
        "(test split) are not regions)"
    ]
    result = runner.invoke(
        app, ["eval", "--data", "pacs", "--metric", "worst_region_acc", "-m", TINY, "--data-root", str(data_root)]
    )
    assert result.exit_code == 2 and "needs regions" in result.stderr and "Traceback" not in result.output


def test_adjusted_average_accuracy_uses_the_training_group_shares(tiny, data_root: Path):
    """On the generated Waterbirds (2 test images per group) adjusted_avg_acc = sum of test group accuracies times
    the training shares (equal here: 1/4 each), i.e. the mean group accuracy; top1 is sample-weighted."""
    from starft_cli.eval.runner import evaluate

    result = evaluate([tiny], "group-shift", data_root)
    wb = result.frame[result.frame["dataset"] == "waterbirds"].set_index("metric")["value"]
    assert wb["adjusted_avg_acc"] == pytest.approx(wb["mean_group_acc"], abs=1e-6)
    assert result.notes == []


def test_empty_results_do_not_crash_the_renderer():
    import pandas as pd

    from starft_cli.reports.schema import FIELDS
    from starft_cli.reports.tables import render

    assert render(pd.DataFrame(columns=list(FIELDS)), "table").startswith("(no results)")


def test_a_suite_file_metric_that_does_not_apply_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _no_model_load(monkeypatch)
    _pets(tmp_path)
    suite = tmp_path / "mine.toml"
    suite.write_text('[[datasets]]\nname = "folder:pets"\nmetrics = ["top1", "worst_group_acc"]\n')
    result = runner.invoke(app, ["eval", "--suite", str(suite), "-m", TINY])
    assert result.exit_code == 2, result.output
    assert "metric worst_group_acc does not apply to folder:" in result.stderr


def test_no_cache_writes_no_cache_at_all(tmp_path: Path, starft_home: Path):
    """--no-cache leaves neither features nor zero-shot heads on disk (the head cache used to be written)."""
    args = ["eval", "--data", f"folder:{_pets(tmp_path)}", "-m", TINY, "--workers", "0", "--no-cache"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cache = starft_home / "cache"
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert written == []
    again = runner.invoke(app, args[:-1])  # the same without --no-cache does write both
    assert again.exit_code == 0, again.output
    assert list((cache / "heads").glob("*.safetensors")) and list((cache / "features").glob("*.safetensors"))


def _replace_keeping_stat(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` of the same size and put its access and modification times back, as
    ``cp -p``, ``rsync -a`` and ``tar x`` do."""
    import os

    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_images_replaced_keeping_path_size_and_mtime_are_not_served_from_the_cache(tiny, tmp_path: Path):
    """Issue 19.6: the two classes' images swapped by a copy that keeps path, size and mtime (BMPs of one size):
    the features are recomputed (the key holds the inode and ctime, which no copy keeps), and `eval` gives the
    same top-1 from the cache as with --no-cache."""
    from starft_cli.data.registry import load_dataset
    from starft_cli.eval.features import compute_features
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "swap", ["cat", "dog"], per_class=3, size=(32, 32), suffix=".bmp")
    args = ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--format", "json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = compute_features(tiny, load_dataset(f"folder:{root}"))
    assert before.from_cache
    for i in range(3):
        cat, dog = root / "cat" / f"{i}.bmp", root / "dog" / f"{i}.bmp"
        cat_bytes, dog_bytes = cat.read_bytes(), dog.read_bytes()
        _replace_keeping_stat(cat, dog_bytes)
        _replace_keeping_stat(dog, cat_bytes)
    after = compute_features(tiny, load_dataset(f"folder:{root}"))
    assert not after.from_cache
    assert np.array_equal(after.features[:3].numpy(), before.features[3:].numpy())
    cached, fresh = runner.invoke(app, args), runner.invoke(app, [*args, "--no-cache"])
    assert cached.exit_code == 0 and fresh.exit_code == 0, cached.output + fresh.output
    top1 = [next(r["value"] for r in json.loads(x.stdout) if r["metric"] == "top1") for x in (first, cached, fresh)]
    assert top1 == [0.833333, 0.166667, 0.166667]  # the swap flips 5 of 6 predictions; the cache used to say 0.833


def _grouped(tmp_path: Path, group_of: dict[str, str]) -> Path:
    """cat/dog x 2 images with a groups.csv giving each class folder's images the group ``group_of[class]``."""
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "grouped", ["cat", "dog"], per_class=2, size=(32, 32))
    rows = [f"{c}/{i}.jpg,{group_of[c]}" for c in ("cat", "dog") for i in range(2)]
    (root / "groups.csv").write_text("filepath,group\n" + "\n".join(rows) + "\n")
    return root


def test_eval_with_no_readable_image_fails_in_one_line(tmp_path: Path):
    """Issue 19.8: eval used to exit 0 with no records when no image could be read (classify and probe exit 1)."""
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "broken", ["cat", "dog"], per_class=2, size=(32, 32))
    for path in root.rglob("*.jpg"):
        path.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--out", str(out)])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: folder:{root}: none of the 4 images could be read (e.g. {root}/cat/0.jpg")
    assert line.endswith("Check the image files (`starft data check` with `--deep` reads every one)")
    assert not out.exists()


def test_a_one_class_evaluation_is_refused(tmp_path: Path):
    """Issue 19.8: with one class every prediction is that class: top-1 100 and ECE 0 whatever the model."""
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "one", ["cat"], per_class=2, size=(32, 32))
    result = runner.invoke(app, ["eval", "--data", f"folder:{root}", "-m", TINY])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: folder:{root} (test split) has one class (cat): every prediction would be that class, so top-1 "
        "would be 100% and ECE 0 whatever the model. Evaluate on at least two classes (folder: data needs a "
        "sub-folder per class)\n"
    )


def test_group_metrics_need_two_groups(tmp_path: Path):
    """One group: worst- and mean-group accuracy would be top-1 under another name; named, an error; by default
    (a built-in suite's metrics) left out with a note, as any metric that does not apply."""
    from starft_cli.eval.metrics import METRICS
    from starft_cli.eval.runner import plan
    from starft_cli.eval.suites import Suite, SuiteEntry

    root = _grouped(tmp_path, {"cat": "indoor", "dog": "indoor"})
    args = ["eval", "--data", f"folder:{root}", "-m", TINY, "--metric", "top1", "--metric", "worst_group_acc"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: metric worst_group_acc does not apply to folder:{root}: worst_group_acc needs at least 2 groups and "
        f"folder:{root} (test split) has 1."
    )
    entry = SuiteEntry(f"folder:{root}", ("top1", "worst_group_acc", "mean_group_acc"))
    prepared = plan(Suite("s", (entry,)), None)
    assert prepared.datasets[0].metrics == ("top1",)
    assert prepared.notes[1] == (
        f"folder:{root}: mean_group_acc not computed (mean_group_acc needs at least 2 groups and folder:{root} (test "
        "split) has 1)"
    )
    assert all(m.min_classes >= 2 for m in METRICS.values())


def test_a_group_without_a_readable_sample_is_noted(tmp_path: Path):
    """A group whose every image is unreadable drops out of worst_group_acc: the result says over which groups."""
    root = _grouped(tmp_path, {"cat": "indoor", "dog": "outdoor"})
    for i in range(2):
        (root / "dog" / f"{i}.jpg").write_bytes(b"broken")
    out = tmp_path / "out"
    args = ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--out", str(out)]
    result = runner.invoke(app, [*args, "--metric", "top1", "--metric", "worst_group_acc"])
    assert result.exit_code == 0, result.output
    note = f"folder:{root}: group metrics over 1 of 2 groups; no readable sample of outdoor"
    assert f"note: {note}\n" in result.stderr
    assert f"- {note}\n" in (out / "leaderboard.md").read_text()
