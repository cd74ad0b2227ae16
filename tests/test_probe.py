"""`starft probe`: spurious drift = StarReg on held-out data, against an independent float64 computation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders

TINY = "starft-tiny:none"
runner = CliRunner()


def _perturb(loaded, scale: float = 0.05, seed: int = 1):
    """A LoadedModel with perturbed weights (a new instance: its fingerprint is computed afresh)."""
    import copy

    import torch

    module = copy.deepcopy(loaded.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return dataclasses.replace(loaded, model=module)


@pytest.fixture(scope="module")
def perturbed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from starft_cli.models import load, save_checkpoint

    loaded = _perturb(load(TINY))
    folder = tmp_path_factory.mktemp("models") / "perturbed"
    save_checkpoint(loaded.model, folder, loaded.model_cfg, loaded.preprocess_cfg, arch="starft-tiny")
    return folder


def _grouped_folders(root: Path) -> Path:
    """3 classes x 4 images with groups.csv: group = class x (image index even/odd)."""
    make_class_folders(root, ["cat", "dog", "car"], per_class=4)
    lines = ["filepath,group"]
    for name in ("cat", "dog", "car"):
        for i in range(4):
            lines.append(f"{name}/{i}.jpg,{name}-{'even' if i % 2 == 0 else 'odd'}")
    (root / "groups.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _drift(frame, pool: str) -> dict:
    rows = frame[frame["metric"] == f"spurious_drift[{pool}]"]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def _independent_drift(student, teacher, paths, labels, names, pool, batch: int, seed: int) -> tuple[float, np.ndarray]:
    """The drift from its definition, in float64: features straight from the open_clip modules, batches and template
    draws as documented, masked softmaxes over the other-class columns only (no -1e8), KL summed per row."""
    import torch
    from PIL import Image

    def image_features(loaded) -> np.ndarray:
        with torch.no_grad():
            x = torch.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in paths])
            f = loaded.model.encode_image(x).double().numpy()
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    def text_features(loaded, texts) -> np.ndarray:
        with torch.no_grad():
            f = loaded.model.encode_text(loaded.tokenizer(texts)).double().numpy()
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    n = len(paths)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).numpy()
    drawn = torch.randint(len(pool), (n,), generator=gen).numpy()
    count = math.ceil(n / batch)
    batches = np.array_split(perm, count)
    texts = [pool[drawn[i]].replace("{}", f"a photo of a {names[labels[i]]}") for i in range(n)]
    fi_t, fi_s = image_features(teacher), image_features(student)
    ft_t, ft_s = text_features(teacher, texts), text_features(student, texts)
    tau = float(teacher.model.logit_scale.exp().item())
    rows = np.zeros(n)
    for b in batches:
        for i in b:
            cols = [j for j in b if labels[j] != labels[i]]
            if not cols:
                continue
            t = tau * fi_t[i] @ ft_t[cols].T
            s = tau * fi_s[i] @ ft_s[cols].T
            log_p = t - np.log(np.exp(t - t.max()).sum()) - t.max()
            log_q = s - np.log(np.exp(s - s.max()).sum()) - s.max()
            rows[i] = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    return float(rows.mean()), rows


def test_drift_of_a_model_against_itself_is_exactly_zero(tiny, class_folders: Path) -> None:
    from starft_cli.probe import probe

    frame = probe(tiny, tiny, f"folder:{class_folders}", pools=["texture", "digits"], reg_batch_size=5)
    for pool in ("texture", "digits"):
        rec = _drift(frame, pool)
        assert rec["value"] == 0.0 and rec["ci_low"] == 0.0 and rec["ci_high"] == 0.0
        assert rec["num_samples"] == 12 and rec["reference"] == TINY
    details = frame[frame["metric"].str.startswith("class_drift[")]
    assert len(details) == 6 and (details["value"] == 0.0).all()


def test_drift_against_a_perturbed_copy_equals_an_independent_float64_computation(tiny, tmp_path: Path) -> None:
    from starft_cli.data.registry import load_dataset
    from starft_cli.probe import probe
    from starft_cli.prompts import load_pool

    root = _grouped_folders(tmp_path / "data")
    student = _perturb(tiny)
    ds = load_dataset(f"folder:{root}")
    frame = probe(student, tiny, f"folder:{root}", pools=["texture"], reg_batch_size=5, seed=3, bootstrap=500)
    expected, rows = _independent_drift(student, tiny, ds.paths, ds.labels, ds.classnames, load_pool("texture"), 5, 3)
    rec = _drift(frame, "texture")
    assert expected > 1e-4
    assert rec["value"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert rec["ci_low"] <= rec["value"] <= rec["ci_high"] and rec["ci_low"] < rec["ci_high"]
    assert rec["reg_batch_size"] == 5 and rec["seed"] == 3 and rec["num_classes"] == 3
    by_metric = dict(zip(frame["metric"], frame["value"], strict=True))
    labels = np.asarray(ds.labels)
    for c, name in enumerate(ds.classnames):
        assert by_metric[f"class_drift[texture:{name}]"] == pytest.approx(rows[labels == c].mean(), rel=1e-3, abs=1e-6)
    groups = np.asarray(ds.groups)
    assert sum(k.startswith("group_drift[texture:") for k in by_metric) == 6
    for g, name in enumerate(ds.group_names):
        assert by_metric[f"group_drift[texture:{name}]"] == pytest.approx(rows[groups == g].mean(), rel=1e-3, abs=1e-6)
    # another seed draws other batches and templates: another (still positive) value
    other = _drift(probe(student, tiny, f"folder:{root}", pools=["texture"], reg_batch_size=5, seed=4), "texture")
    assert other["value"] > 0 and other["value"] != rec["value"]


def test_one_class_dataset_is_refused(tiny, tmp_path: Path) -> None:
    """Issue 19.8's kind: StarReg masks a sample's own class, so with one class nothing is compared and the drift
    is 0 for any model (it used to be reported as 0.0000): refused in one line, as `eval` refuses one class."""
    from starft_cli.errors import UsageError
    from starft_cli.probe import probe

    root = make_class_folders(tmp_path / "one", ["cat"], per_class=4)
    with pytest.raises(UsageError) as caught:
        probe(_perturb(tiny), tiny, f"folder:{root}", pools=["background"])
    assert caught.value.one_line() == (
        f"folder:{root} ('test' split) has one class (cat): the drift over other-class descriptions would be 0 for "
        "every model. Probe on data with at least two classes"
    )


def test_probe_batches_partition_the_split_into_near_equal_batches() -> None:
    from starft_cli.probe import probe_batches

    batches, templates = probe_batches(11, 4, 7, seed=0)
    assert sorted(len(b) for b in batches) == [3, 4, 4]
    assert sorted(np.concatenate(batches).tolist()) == list(range(11))
    assert templates.shape == (11,) and templates.min() >= 0 and templates.max() < 7
    again, templates2 = probe_batches(11, 4, 7, seed=0)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True)) and (templates == templates2).all()


def test_cached_image_features_are_not_recomputed(tiny, class_folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features cached by `starft eval` (or an earlier probe) are read, not computed: the image encoder of both
    models fails on the second probe and the probe still gives the same value."""
    from starft_cli.eval.runner import evaluate
    from starft_cli.probe import probe

    student = _perturb(tiny)
    data = f"folder:{class_folders}"
    from starft_cli.eval.suites import Suite, SuiteEntry

    evaluate([tiny, student], Suite("custom", (SuiteEntry(data, ("top1",)),)), None)  # the eval cache
    first = _drift(probe(student, tiny, data, pools=["texture"]), "texture")

    def fail(*args, **kwargs):
        raise AssertionError("image features recomputed")

    for loaded in (tiny, student):
        monkeypatch.setattr(loaded.model, "encode_image", fail)
    second = _drift(probe(student, tiny, data, pools=["texture"]), "texture")
    assert second["value"] == first["value"] > 0


def test_cli_probe_writes_records_that_report_shows(perturbed_dir: Path, tmp_path: Path) -> None:
    root = _grouped_folders(tmp_path / "data")
    out = tmp_path / "out"
    args = ["probe", "-m", str(perturbed_dir), "-m", TINY, "--reference", TINY, "--data", f"folder:{root}"]
    args += ["--pool", "texture", "--reg-batch-size", "5", "--device", "cpu", "--workers", "0", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "drift (nats)" in result.stdout and "groups:" in result.stdout
    records = json.loads((out / "results.json").read_text())
    heads = {r["model"]: r for r in records if r["metric"] == "spurious_drift[texture]"}
    assert heads[TINY]["value"] == 0.0 and heads[str(perturbed_dir)]["value"] > 0
    assert heads[TINY]["split"] == "test" and heads[TINY]["pool"] == "texture"
    assert sum(r["metric"].startswith("group_drift[texture:") for r in records) == 12
    board = (out / "leaderboard.md").read_text()
    assert "spurious_drift[texture]" in board and "in nats" in board
    shown = runner.invoke(app, ["report", str(out)])
    assert shown.exit_code == 0 and "spurious_drift[texture]" in shown.stdout
    value = heads[str(perturbed_dir)]["value"]
    assert f"{value:.4f}" in shown.stdout  # drift is shown in nats, not multiplied into %
    as_json = runner.invoke(app, [*args[:-2], "--format", "json"])
    assert as_json.exit_code == 0
    again = {r["model"]: r["value"] for r in json.loads(as_json.stdout) if r["metric"] == "spurious_drift[texture]"}
    assert again == {m: r["value"] for m, r in heads.items()}  # deterministic for a seed


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--pool", "nonsense"], 1, "unknown spurious pool 'nonsense'"),
        (["--format", "md"], 2, "unknown format 'md'"),
        (["--caption-template", "a photo"], 2, "exactly one {} slot"),
        (["--pool", "texture", "--pool", "texture"], 2, "two pools are named 'texture'"),
    ],
)
def test_cli_probe_bad_input_is_one_line(class_folders: Path, extra: list[str], code: int, message: str) -> None:
    args = ["probe", "-m", TINY, "--reference", TINY, "--data", f"folder:{class_folders}", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--workers", "0", *extra])
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.output


def test_probe_cost_helpers_share_tokenizers_and_restore_threads(tiny) -> None:
    """Loading a model and its reference builds the BPE tokenizer once; the one-thread block computation on CPU
    leaves torch's thread count as it found it."""
    import torch

    from starft_cli.models import load
    from starft_cli.probe import drift_rows

    assert load(TINY).tokenizer is load(TINY).tokenizer
    threads = torch.get_num_threads()
    feats = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    labels, templates = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 1, 2, 0, 1, 2])
    rows = drift_rows(feats, text, feats, text, labels, templates, [np.arange(6)], 10.0)
    assert (rows == 0).all() and torch.get_num_threads() == threads
