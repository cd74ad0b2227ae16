"""The embedded benchmark (spurious-digits), the demo's zero-shot model and `starft demo` end to end."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data import digits

runner = CliRunner()


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo_home")


@pytest.fixture(autouse=True)
def starft_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One STARFT_HOME for this module: the benchmark and the demo models are built once."""
    monkeypatch.setenv("STARFT_HOME", str(shared_home))
    return shared_home


@pytest.fixture(scope="module")
def splits() -> dict[str, digits.Split]:
    return digits.generate(seed=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generator_is_deterministic_to_the_byte(tmp_path: Path) -> None:
    a = digits.write(tmp_path / "a", seed=3)
    b = digits.write(tmp_path / "b", seed=3)
    files = sorted(p.name for p in a.iterdir())
    assert files == [
        "manifest.json",
        "pretrain.safetensors",
        "test.safetensors",
        "train.safetensors",
        "val.safetensors",
    ]
    assert all(_sha(a / f) == _sha(b / f) for f in files)
    c = digits.write(tmp_path / "c", seed=4)
    assert _sha(a / "train.safetensors") != _sha(c / "train.safetensors")
    assert digits.verify(a) == []


def test_splits_share_no_source_digit(splits: dict[str, digits.Split]) -> None:
    sources = {name: set(split.sources.tolist()) for name, split in splits.items()}
    names = list(sources)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not sources[first] & sources[second], (first, second)
    # each source digit keeps its own label
    for split in splits.values():
        assert len(set(zip(split.sources.tolist(), split.labels.tolist(), strict=True))) == len(set(split.sources))


def test_biased_splits_put_95_percent_on_the_class_background(splits: dict[str, digits.Split]) -> None:
    for name, per_class in (("train", 160), ("val", 40)):
        split = splits[name]
        for c in range(len(digits.CLASSNAMES)):
            backgrounds = split.backgrounds[split.labels == c]
            assert len(backgrounds) == per_class
            counts = Counter(backgrounds.tolist())
            assert counts[c] == round(per_class * 0.95), (name, c, counts)
            minority = [counts[b] for b in range(len(digits.BACKGROUNDS)) if b != c]
            assert max(minority) - min(minority) <= 1  # spread evenly over the other backgrounds
        assert float(np.mean(split.labels == split.backgrounds)) == pytest.approx(0.95)


def test_test_and_pretrain_splits_are_balanced(splits: dict[str, digits.Split]) -> None:
    for name, per_group in (("test", 54), ("pretrain", 100)):
        split = splits[name]
        groups = Counter(digits.group_of(y, b) for y, b in zip(split.labels, split.backgrounds, strict=True))
        assert len(groups) == len(digits.CLASSNAMES) * len(digits.BACKGROUNDS)
        assert set(groups.values()) == {per_group}, name
    captions = splits["pretrain"].captions
    assert all(digits.CLASSNAMES[y] in cap for y, cap in zip(splits["pretrain"].labels, captions, strict=True))
    named = sum(any(b in cap for b in digits.BACKGROUNDS) for cap in captions) / len(captions)
    assert 0.55 < named < 0.8  # most captions name the background, some only the digit
    assert splits["train"].captions[0] == f"a photo of a {digits.CLASSNAMES[splits['train'].labels[0]]}."


def test_registered_like_any_dataset_and_generated_on_first_use(shared_home: Path) -> None:
    from starft_cli.data.registry import list_datasets, load_dataset

    assert "spurious-digits" in list_datasets()
    test = load_dataset("spurious-digits", split="test")  # no --data-root: generated into the cache
    assert (shared_home / "cache" / "datasets" / "spurious-digits" / "manifest.json").is_file()
    assert len(test) == 1350 and test.groups is not None and len(test.group_names) == 25
    assert test.get_image(0).size == (32, 32)
    done = runner.invoke(app, ["data", "check", "spurious-digits"])
    assert done.exit_code == 0, done.output
    assert "train on the class's own background (%): 95.0" in done.output
    assert "test group three on blue checks: 54" in done.output
    listed = runner.invoke(app, ["data", "list"])
    assert "spurious-digits" in listed.output


def test_damaged_copy_is_detected_and_generated_again(tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset

    root = digits.write(tmp_path / "spurious-digits")
    good = _sha(root / "val.safetensors")
    data = bytearray((root / "val.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (root / "val.safetensors").write_bytes(bytes(data))
    assert any("damaged" in p for p in digits.verify(root))
    done = runner.invoke(app, ["data", "check", "spurious-digits", "--data-root", str(tmp_path)])
    assert done.exit_code == 1 and _sha(root / "val.safetensors") != good  # reported: a check writes nothing
    assert "does not match its sha256" in done.stdout and "starft data download spurious-digits" in done.stdout
    done = runner.invoke(app, ["data", "download", "spurious-digits", "--data-root", str(tmp_path)])
    assert done.exit_code == 0 and _sha(root / "val.safetensors") == good  # regenerated, same bytes
    (root / "manifest.json").unlink()
    ds = load_dataset("spurious-digits", tmp_path, split="val")
    assert len(ds) == 200 and (root / "manifest.json").is_file()


def test_quick_zero_shot_model_is_deterministic_and_rebuilt_when_damaged() -> None:
    from starft_cli import demo
    from starft_cli.models import WEIGHTS_NAME

    folder = demo.ensure_zero_shot(quick=True, device="cpu")
    first = _sha(folder / WEIGHTS_NAME)
    assert demo.verify_zero_shot(folder) is None
    assert json.loads((folder / "build.json").read_text())["recipe"]["split"] == "pretrain"
    again = demo.ensure_zero_shot(quick=True, device="cpu", rebuild=True)
    assert _sha(again / WEIGHTS_NAME) == first  # same recipe, same seed: the same bytes
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-8] ^= 0x01
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    assert "damaged" in (demo.verify_zero_shot(folder) or "")
    demo.ensure_zero_shot(quick=True, device="cpu")
    assert _sha(folder / WEIGHTS_NAME) == first


def test_quick_demo_end_to_end_then_reuses_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert first.exit_code == 0, first.output
    for name in ("results.json", "leaderboard.md", "leaderboard.csv", "demo.png"):
        assert (out / name).is_file(), name
    records = json.loads((out / "results.json").read_text())
    models = {r["model"] for r in records}
    assert models == {"zero-shot", "ft", "flyp", "starft"}
    metrics = {(r["split"], r["metric"]) for r in records}
    assert {("val", "top1"), ("test", "top1"), ("test", "worst_group_acc"), ("test", "mean_group_acc")} <= metrics
    assert ("test", "ece") in metrics
    drift = {r["model"]: r for r in records if r["metric"] == "spurious_drift[digits]"}
    assert set(drift) == models and drift["zero-shot"]["value"] == 0.0 and drift["zero-shot"]["split"] == "test"
    assert {r["reference"] for r in drift.values()} == {"zero-shot"}
    assert drift["flyp"]["value"] > 0 and "spurious_drift[digits]" in first.stdout
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("zero-shot", "ft ", "flyp", "starft"):
        assert line in first.stdout
    # each row's method and hyper-parameters under the leaderboard (terminal and leaderboard.md)
    note = "starft: starft (lambda=1, schedule=constant, pool=digits); lr 0.0001, 2 epochs (at most 4 steps), batch 64"
    assert note in first.stdout and note in (out / "leaderboard.md").read_text()
    assert "ft: ft; lr 0.0001" in first.stdout
    # every run trained the same number of steps with the same batch and seed
    configs = [json.loads((out / "runs" / f"{m}-seed0" / "config.json").read_text()) for m in ("ft", "flyp", "starft")]
    for key in ("epochs", "batch_size", "lr", "warmup", "seed", "max_steps", "data", "split"):
        assert len({json.dumps(c[key]) for c in configs}) == 1, key
    second = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "zero-shot model: cached" in second.stderr
    for method in ("ft", "flyp", "starft"):
        assert f"runs/{method}-seed0: finished earlier (4 steps), reused" in second.stderr
    assert "training " not in second.stderr  # no step was run again
    again = json.loads((out / "results.json").read_text())
    assert sorted((r["model"], r["split"], r["metric"], r["value"]) for r in again) == sorted(
        (r["model"], r["split"], r["metric"], r["value"]) for r in records
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "flyp,nosuch"], "unknown demo method 'nosuch'"),
        (["--methods", ""], "--methods is empty"),
        (["--methods", "flyp,flyp"], "listed twice"),
    ],
)
def test_demo_bad_methods_list_the_known_ones(args: list[str], message: str) -> None:
    done = runner.invoke(app, ["demo", *args])
    assert done.exit_code == 2
    assert message in done.stderr
    if "unknown" in message:
        assert "ft, flyp, flyp-lowlr, starft, starft-paper, kl" in done.stderr


def test_demo_unwritable_out_fails_before_any_work(tmp_path: Path, shared_home: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = runner.invoke(app, ["demo", "--quick", "--out", str(blocker / "sub")])
    assert done.exit_code == 2
    assert done.stderr.count("\n") == 1 and "cannot write to --out" in done.stderr
    assert "Traceback" not in done.output


@pytest.mark.slow
def test_demo_zero_shot_model_classifies_test_images(tmp_path: Path) -> None:
    """The real demo model (pre-trained once, cached) names the digit of a test image of each class."""
    from PIL import Image

    from starft_cli.data.registry import load_dataset

    test = load_dataset("spurious-digits", split="test")
    paths = []
    for c in range(len(digits.CLASSNAMES)):
        index = next(i for i, (y, g) in enumerate(zip(test.labels, test.groups, strict=True)) if y == c and g % 5 != c)
        path = tmp_path / f"{digits.CLASSNAMES[c]}.png"
        Image.fromarray(test.images[index]).save(path)
        paths.append(str(path))
    done = runner.invoke(
        app,
        [
            "classify",
            *paths,
            "--labels",
            ",".join(digits.CLASSNAMES),
            "--model",
            "starft-demo-zero-shot",
            "--format",
            "json",
        ],
    )
    assert done.exit_code == 0, done.output
    results = json.loads(done.stdout)
    assert [r["predictions"][0]["label"] for r in results] == list(digits.CLASSNAMES), results
    assert all(r["predictions"][0]["probability"] > 0.5 for r in results), results


def test_a_name_that_is_both_an_architecture_and_a_zoo_model_is_refused(tmp_path: Path, monkeypatch) -> None:
    """An architecture name used to shadow a zoo model of the same name (random weights, silently)."""
    from starft_cli.errors import UsageError
    from starft_cli.models import parse_model_ref

    manifest = tmp_path / "zoo.toml"
    manifest.write_text(
        'schema = 1\n[models.starft-tiny]\narch = "starft-tiny"\nsource = "recipe:starft-demo"\nkind = "zero-shot"\n'
        'license = "MIT"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("STARFT_ZOO", str(manifest))
    with pytest.raises(UsageError, match="both an architecture and a zoo model"):
        parse_model_ref("starft-tiny")
    assert parse_model_ref("starft-tiny:none").kind == "pretrained"
    assert parse_model_ref("zoo:starft-tiny").kind == "zoo"


def test_demo_interrupted_during_fine_tuning_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in the second run: re-running reuses the first run, resumes the second, trains the third."""
    import starft_cli.train as train

    real = train.finetune
    calls: list[str] = []

    def interrupt_in_flyp(config, progress=None):
        calls.append(Path(config.out).name)
        if Path(config.out).name != "flyp-seed0" or calls.count("flyp-seed0") > 1:
            return real(config, progress=progress)

        def press_ctrl_c_after_step_2(event):
            progress(event)
            if event.get("kind") == "checkpoint" and event.get("step") == 2:
                raise KeyboardInterrupt  # two steps of flyp are done and checkpointed

        return real(config, progress=press_ctrl_c_after_step_2)

    monkeypatch.setattr(train, "finetune", interrupt_in_flyp)
    out = tmp_path / "demo"
    first = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert first.exit_code == 130, first.output
    assert f"run `starft demo --out {out} --seed 0 --methods ft,flyp,starft --quick` again" in first.stderr
    assert not (out / "results.json").exists()
    second = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "runs/ft-seed0: finished earlier (4 steps), reused" in second.stderr
    flyp = second.stderr.split("fine-tuning flyp")[1].split("[demo]")[0]
    assert "step 3/4" in flyp and "step 1/4" not in flyp, flyp
    steps = [
        json.loads(line)["step"] for line in (out / "runs" / "flyp-seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # resumed at step 3: no step lost or repeated
    assert (out / "results.json").is_file()


def test_zoo_verify_of_a_damaged_built_model_says_it_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    from starft_cli import demo
    from starft_cli.models import CONFIG_NAME, WEIGHTS_NAME

    monkeypatch.setenv("STARFT_HOME", str(tmp_path / "home"))
    folder = demo.zero_shot_dir()
    folder.mkdir(parents=True)
    (folder / WEIGHTS_NAME).write_bytes(b"not the weights that were built")
    (folder / CONFIG_NAME).write_text("{}")
    (folder / "build.json").write_text(json.dumps({"recipe_version": demo.RECIPE_VERSION, "sha256": "0" * 64}))
    done = runner.invoke(app, ["zoo", "verify", "starft-demo-zero-shot"])
    assert done.exit_code == 1
    assert "starft-demo-zero-shot: mismatch" in done.stdout and "damaged" in done.stdout
    assert "A damaged locally built model is built again on its next use" in done.stderr
    assert "were deleted" not in done.stderr and (folder / WEIGHTS_NAME).exists()
