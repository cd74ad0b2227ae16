"""Class names and templates by protocol (issue 17, items 1-7): every dataset's names and rendered prompts against
files of expected values (tests/expected_protocols/<protocol>/<dataset>.json), each naming its source and written
in that source's own order; the loaders, data check and eval agree on them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.registry import load_dataset
from tests.layouts import LAYOUTS, write_mat

runner = CliRunner()
EXPECTED = Path(__file__).parent / "expected_protocols"
CASES = sorted((p.parent.name, p.stem) for p in EXPECTED.glob("*/*.json"))


@pytest.mark.parametrize(("protocol", "dataset"), CASES, ids=[f"{p}/{d}" for p, d in CASES])
def test_names_and_prompts_match_the_source(protocol: str, dataset: str) -> None:
    from starft_cli.data.protocols import get_protocol
    from starft_cli.prompts import fill

    expected = json.loads((EXPECTED / protocol / f"{dataset}.json").read_text())
    assert expected["source"]  # every expected file names where its values come from
    entry = get_protocol(dataset, protocol)
    assert entry is not None and entry.protocol == protocol
    names = list(entry.classnames or ())
    if expected["order"] == "labels":  # the source lists them in the dataset's label order
        assert names == expected["classnames"]
    elif expected["order"] == "any":  # the source sorts them otherwise (its folder order): same names
        assert sorted(names) == sorted(expected["classnames"]) and len(names) == len(expected["classnames"])
    elif expected["order"] == "own":  # the dataset's own names (ImageNet's list, OpenAI CLIP's names)
        from starft_cli.data.imagenet import imagenet_classes

        assert entry.classnames is None and list(imagenet_classes()[1]) == expected["classnames"]
    for label, name in expected.get("label_order_spot_checks", {}).items():
        assert names[int(label)] == name
    templates = entry.template_list()
    for classname, prompts in expected["prompts"].items():
        assert [fill(t, classname) for t in templates] == prompts


def test_every_registered_dataset_has_a_reference_protocol_and_clip_benchmark_falls_back_where_it_has_none() -> None:
    from starft_cli.data.protocols import get_protocol, protocol_datasets
    from starft_cli.data.registry import list_datasets

    # caltech101-vtab exists only as its Hub copy, read with that copy's own class names and templates (VTAB's)
    assert set(list_datasets()) - {"caltech101-vtab"} <= set(protocol_datasets("reference"))
    iwildcam = get_protocol("iwildcam", "clip-benchmark")
    assert (iwildcam.protocol, iwildcam.asked) == ("reference", "clip-benchmark")
    assert "'clip-benchmark' does not define iwildcam" in iwildcam.describe()
    assert get_protocol("cars-of-my-own") is None


def test_the_five_changed_template_sets_have_the_sizes_of_the_reference() -> None:
    from starft_cli.data.protocols import get_protocol

    sizes = {d: len(get_protocol(d).template_list()) for d in ("fmow", "iwildcam", "caltech101", "stanford-cars")}
    sizes["flowers102"] = len(get_protocol("flowers102").template_list())
    assert sizes == {"fmow": 16, "iwildcam": 2, "caltech101": 34, "stanford-cars": 8, "flowers102": 1}


def test_article_slot_follows_the_reference_rule() -> None:
    from starft_cli.errors import TemplateError
    from starft_cli.prompts import fill, parse_templates

    assert fill("aerial photo of {a/an c}.", "impoverished_settlement") == "aerial photo of an impoverished settlement."
    assert fill("aerial photo of {a/an c}.", "zoo") == "aerial photo of a zoo."
    assert parse_templates(["{a/an c} here."], "x") == ["{a/an c} here."]
    with pytest.raises(TemplateError, match="exactly one slot"):
        parse_templates(["{a/an c} and {}"], "x")


def _iwildcam_with_all_182_classes(data_root: Path) -> Path:
    root = LAYOUTS["iwildcam"](data_root)  # labels 0..2 in every split
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    for n, y in enumerate((153, 181)):  # WILDS' last label is 181; 153 and 181 share one name
        name = f"extra{n}.jpg"
        (root / "train" / name).write_bytes((root / "train" / rows[0]["filename"]).read_bytes())
        rows.append({"split": "test", "location_remapped": "0", "y": str(y), "filename": name})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_iwildcam_is_loaded_as_wilds_defines_it_and_check_and_eval_agree(tmp_path: Path) -> None:
    _iwildcam_with_all_182_classes(tmp_path)
    ds = load_dataset("iwildcam", tmp_path, "test")
    assert len(ds.classnames) == 182
    assert ds.classnames[:3] == ["empty", "white-lipped peccary", "central american agouti"]
    assert ds.classnames[153] == ds.classnames[181] == "central american red brocket"
    assert sorted(set(ds.labels)) == [0, 1, 2, 153, 181]
    check = runner.invoke(app, ["data", "check", "iwildcam", "--data-root", str(tmp_path)])
    assert check.exit_code == 0, check.output
    assert "4 pair(s) of classes share one name" in check.output
    out = tmp_path / "out"
    options = ["-m", "starft-tiny:none", "--device", "cpu", "--workers", "0", "--metric", "top1", "--out", str(out)]
    ev = runner.invoke(app, ["eval", "--data", "iwildcam", "--data-root", str(tmp_path), *options])
    assert ev.exit_code == 0, ev.output
    assert "153/181 'central american red brocket'" in ev.output  # the note line, in the footnote
    records = json.loads((out / "results.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert records[0]["num_classes"] == 182 and records[0]["protocol"] == "reference"
    assert records[0]["templates"] == "iwildcam" and "alinlab/StarFT" in records[0]["protocol_source"]
    assert "class names and templates: protocol 'reference'" in ev.output


def test_a_name_repeated_without_being_declared_is_refused() -> None:
    from starft_cli.data.protocols import get_protocol
    from starft_cli.errors import DataError

    entry = get_protocol("iwildcam")
    names = list(entry.classnames or ())
    assert entry.check_collisions(names) is True  # the 4 declared pairs
    names[5] = names[6]
    with pytest.raises(DataError, match=r"classes 5 and 6 .* does not declare them"):
        entry.check_collisions(names)
    with pytest.raises(DataError, match="classes 0 and 1"):
        get_protocol("flowers102").check_collisions(["rose", "Rose"])


def test_fmow_country_with_an_empty_region_is_a_region_that_counts(tmp_path: Path) -> None:
    from starft_cli.eval.metrics import worst_region_accuracy

    root = LAYOUTS["fmow"](tmp_path)  # ATA (2017 test rows) is not in the mapping: 'Other'
    mapping = (root / "country_code_mapping.csv").read_text()
    (root / "country_code_mapping.csv").write_text(mapping.replace("KEN,Africa", "KEN,"))
    ds = load_dataset("fmow", tmp_path, "test")
    assert ds.group_names == ["Asia", "Europe", "Africa", "Americas", "Oceania", "Other", "(no region)"]
    regions = [ds.group_names[g] for g in ds.groups or []]
    assert regions.count("(no region)") == 2 and regions.count("Other") == 2 and regions.count("Africa") == 0
    # the empty-region country counts in worst-region accuracy; 'Other' does not
    wrong_there = np.asarray([g != 6 for g in ds.groups or []], dtype=int)
    labels = np.ones(len(ds.labels), dtype=int)
    other = [ds.group_names.index("Other")]
    assert worst_region_accuracy(wrong_there, labels, np.asarray(ds.groups), ignore=other) == 0.0
    assert ds.classnames[1] == "airport_hangar"  # WILDS' category names as the reference prompts with them


def test_caltech_flowers_cifar100_names_follow_the_protocol(tmp_path: Path) -> None:
    from tests.layouts import make_caltech101

    make_caltech101(tmp_path, categories=("Faces", "Faces_easy", "accordion"), per_class=3)
    assert load_dataset("caltech101", tmp_path, "all").classnames == ["off-center face", "centered face", "accordion"]
    flowers = LAYOUTS["flowers102"](tmp_path)
    write_mat(flowers / "imagelabels.mat", {"labels": np.array([[41.0] * 18])})
    assert load_dataset("flowers102", tmp_path, "test").classnames[40] == "barbeton daisy"
    from starft_cli.data.cifar import protocol_names
    from starft_cli.data.protocols import get_protocol

    standard = [n.replace("_", " ") for n in get_protocol("cifar100").classnames or ()]
    assert protocol_names("cifar100", standard)[1] == "aquarium_fish"  # torchvision's, as CLIP_benchmark prompts


def test_eval_protocol_clip_benchmark_gives_its_names_and_is_recorded(tmp_path: Path) -> None:
    from starft_cli.eval.runner import plan
    from starft_cli.eval.suites import Suite, SuiteEntry

    root = LAYOUTS["stanford-cars"](tmp_path)
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]
    write_mat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    suite = Suite("custom", (SuiteEntry(dataset="stanford-cars", metrics=("top1",)),))
    reference = plan(suite, tmp_path).datasets[0]
    clip_benchmark = plan(suite, tmp_path, protocol="clip-benchmark").datasets[0]
    assert reference.dataset.classnames[2] == "Ram C-V Cargo Van Minivan 2012"  # the StarFT code's folder name
    assert clip_benchmark.dataset.classnames[2] == "Ram C/V Cargo Van Minivan 2012"  # cars_meta.mat's
    assert clip_benchmark.protocol.protocol == "clip-benchmark" and reference.protocol.protocol == "reference"
    assert (reference.templates_name, clip_benchmark.templates_name) == ("cars", "clip-benchmark:stanford-cars")
    bad = runner.invoke(app, ["eval", "--data", "stanford-cars", "-m", "starft-tiny:none", "--protocol", "clip"])
    assert bad.exit_code != 0 and "unknown protocol 'clip'" in bad.output


def test_a_trained_head_over_repeated_names_keeps_each_class_row(tiny) -> None:
    import dataclasses

    import torch

    from starft_cli.zeroshot import trained_head

    names = ["lowland paca", "jaguarundi", "agouti", "lowland paca"]  # iWildCam's kind: one name, two classes
    loaded = dataclasses.replace(tiny, extra={"head": torch.arange(8.0).reshape(4, 2), "head_classnames": names})
    assert trained_head(loaded, names, device="cpu")[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    # another class list is still matched by name (case and spaces aside)
    assert trained_head(loaded, ["Agouti", "jaguarundi"], device="cpu")[:, 0].tolist() == [4.0, 2.0]


def test_finetune_trains_on_iwildcam_with_its_182_classes(tmp_path: Path) -> None:
    _iwildcam_with_all_182_classes(tmp_path / "data")
    out = tmp_path / "run"
    data = ["--data", "iwildcam", "--data-root", str(tmp_path / "data"), "--backbone", "starft-tiny:none"]
    run = ["--method", "flyp", "--epochs", "1", "--batch-size", "4", "--max-steps", "1", "--device", "cpu"]
    result = runner.invoke(app, ["finetune", *data, *run, "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "iwildcam" and (out / "checkpoints").is_dir()


@pytest.mark.parametrize(
    ("dataset", "same_as"),
    [("cifar10.2", "cifar10"), ("cifar10.02", "cifar10")]
    + [(d, "imagenet") for d in ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")],
)
@pytest.mark.parametrize("protocol", ["reference", "clip-benchmark"])
def test_datasets_that_share_a_class_list_share_its_names_and_templates(dataset, same_as, protocol) -> None:
    from starft_cli.data.protocols import get_protocol

    entry, other = get_protocol(dataset, protocol), get_protocol(same_as, protocol)
    assert (entry.classnames, entry.template_list()) == (other.classnames, other.template_list())
    assert entry.protocol == protocol


@pytest.mark.parametrize(("dataset", "templates"), [("pacs", "pacs"), ("spurious-digits", "digits")])
def test_datasets_no_source_evaluates_keep_their_own_names_and_starfts_templates(dataset, templates) -> None:
    from starft_cli.data.protocols import get_protocol

    entry = get_protocol(dataset)
    assert entry.classnames is None and entry.templates == templates and entry.source.startswith("starft's own")
    assert get_protocol(dataset, "clip-benchmark").protocol == "reference"  # CLIP_benchmark has none: the fallback


def test_a_trained_head_still_applies_under_another_protocols_names(tmp_path: Path) -> None:
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry

    root = LAYOUTS["stanford-cars"](tmp_path / "data")
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]
    write_mat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    data = ["--data", "stanford-cars", "--data-root", str(tmp_path / "data"), "--backbone", "starft-tiny:none"]
    run = ["--method", "lp", "--epochs", "1", "--batch-size", "4", "--max-steps", "1", "--device", "cpu"]
    result = runner.invoke(app, ["finetune", *data, *run, "--out", str(tmp_path / "lp")])
    assert result.exit_code == 0, result.output
    suite = Suite("cars", (SuiteEntry(dataset="stanford-cars", metrics=("top1",)),))
    model = str(tmp_path / "lp" / "checkpoints" / "last")
    frame = evaluate(model, suite, tmp_path / "data", protocol="clip-benchmark", use_cache=False).frame
    # trained on 'Ram C-V ...' (the reference's name), evaluated under CLIP_benchmark's 'Ram C/V ...': same head
    assert set(frame["templates"]) == {"trained head"} and set(frame["protocol"]) == {"clip-benchmark"}
