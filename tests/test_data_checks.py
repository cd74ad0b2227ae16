"""`starft data check` lists every problem in one run; class names and groups for your own data; downloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.registry import load_dataset
from starft_cli.errors import DataError
from tests.imagegen import make_class_folders, make_image, make_mode_image
from tests.layouts import LAYOUTS

runner = CliRunner()
TINY = "starft-tiny:none"


def _waterbirds_with_three_problems(data_root: Path) -> Path:
    """A bad split value, a missing image and a corrupt image, all at once."""
    root = LAYOUTS["waterbirds"](data_root)
    meta = root / "metadata.csv"
    rows = list(csv.DictReader(meta.read_text().splitlines()))
    rows[3]["split"] = "7"
    with meta.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / rows[0]["img_filename"]).unlink()  # a train image
    (root / rows[-1]["img_filename"]).write_bytes(b"\xff\xd8\xff damaged")  # a test image
    return root


def test_data_check_lists_every_waterbirds_problem_in_one_run(tmp_path: Path) -> None:
    from starft_cli.data.manage import check_dataset

    _waterbirds_with_three_problems(tmp_path)
    report = check_dataset("waterbirds", tmp_path, deep=True)
    text = "\n".join(report.problems)
    assert "1 row(s) with bad values" in text and "line 5 (split='7')" in text
    assert "1 images listed in metadata.csv are missing" in text and "bird_0.jpg" in text
    assert "test: 1 unreadable image(s)" in text and "is damaged" in text  # decoded despite the other problems
    assert len(report.problems) == 3, report.problems
    result = runner.invoke(app, ["data", "check", "waterbirds", "--data-root", str(tmp_path), "--deep"])
    assert result.exit_code == 1
    assert result.stdout.count("problem:") == 3
    assert "(3 problem(s) above)" in result.stderr
    with pytest.raises(DataError, match=r"not laid out right: .*bad values.* \(and 1 more problem\(s\)\)"):
        load_dataset("waterbirds", tmp_path)


def test_deep_check_of_a_folder_decodes_even_when_it_does_not_load(tmp_path: Path) -> None:
    from starft_cli.data.manage import check_dataset

    root = make_class_folders(tmp_path / "f", ["sea_lion", "sea lion"], per_class=2)
    (root / "sea_lion" / "0.jpg").write_bytes(b"not a jpeg")
    report = check_dataset(f"folder:{root}", None, deep=True)
    assert len(report.problems) == 2
    assert "become one class name" in report.problems[0] and "0.jpg is damaged" in report.problems[1]


def test_deep_check_reports_the_conversions_it_would_apply(tmp_path: Path) -> None:
    root = tmp_path / "f"
    kinds = {"a": ["jpeg-RGB", "png-I;16", "png-RGB16", "png-I;16"], "b": ["gif-animated", "png-RGBA", "jpeg-L"]}
    for folder, names in kinds.items():
        for i, kind in enumerate(names):
            make_mode_image(root / folder / f"{i}.{'jpg' if kind.startswith('jpeg') else kind.split('-')[0]}", kind)
    result = runner.invoke(app, ["data", "check", f"folder:{root}", "--deep"])
    assert result.exit_code == 0, result.output
    assert "note: 3 image(s) are 16-bit: scaled to 8 bits (the high byte, value >> 8)" in result.stdout
    assert "note: 1 image(s) are animated: the first frame is used" in result.stdout
    assert "note: 1 image(s) have an alpha channel or transparency: alpha is dropped" in result.stdout


def _csv(tmp_path: Path, labels: list[str], extra: dict[str, list[str]] | None = None) -> Path:
    columns = {"filepath": [f"{i}.jpg" for i in range(len(labels))], "label": labels, **(extra or {})}
    for i in range(len(labels)):
        make_image(tmp_path / f"{i}.jpg", i)
    lines = [",".join(columns)] + [",".join(values) for values in zip(*columns.values(), strict=True)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.csv"


def test_classnames_with_string_labels_set_the_order_and_must_match(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["dog", "cat", "bird", "cat"])
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\nbird\n")
    ds = load_dataset(f"csv:{path}", classnames_file=names)
    assert ds.classnames == ["dog", "cat", "bird"] and ds.labels == [0, 1, 2, 1]
    assert load_dataset(f"csv:{path}").classnames == ["bird", "cat", "dog"]  # no file: the sorted labels
    names.write_text("dog\ncat\nfish\n")  # 'bird' unknown, 'fish' unused
    with pytest.raises(DataError, match=r"label\(s\) not in .*names.txt: bird; name\(s\) in .*names.txt that no row"):
        load_dataset(f"csv:{path}", classnames_file=names)
    names.write_text("dog\ncat\n")  # two names for three classes: no longer ignored
    result = runner.invoke(app, ["eval", "--data", f"csv:{path}", "--classnames", str(names), "-m", TINY])
    assert result.exit_code == 1 and "label(s) not in" in result.stderr and "bird" in result.stderr


def test_data_check_takes_classnames_and_names_the_file_beside_the_csv(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["0", "1", "1"])
    result = runner.invoke(app, ["data", "check", f"csv:{path}"])
    assert result.exit_code == 1
    assert "integer labels but no class names" in result.stdout
    assert f"Pass --classnames FILE, or put {tmp_path / 'classnames.txt'} beside the CSV" in result.stdout
    names = tmp_path / "my_names.txt"
    names.write_text("cat\ndog\n")
    result = runner.invoke(app, ["data", "check", f"csv:{path}", "--classnames", str(names)])
    assert result.exit_code == 0, result.output
    assert "class cat: 1" in result.stdout and "class dog: 2" in result.stdout
    usage = runner.invoke(app, ["data", "check", "pacs", "--data-root", str(tmp_path), "--classnames", str(names)])
    assert usage.exit_code == 2 and "--classnames applies to folder:PATH and csv:PATH" in usage.stderr


def test_csv_group_column_gives_groups_and_worst_group_accuracy(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["cat", "dog", "cat", "dog"], {"group": ["outdoor", "indoor", "indoor", "outdoor"]})
    ds = load_dataset(f"csv:{path}")
    assert ds.group_names == ["indoor", "outdoor"] and ds.groups == [1, 0, 0, 1]
    out = tmp_path / "out"
    args = ["eval", "--data", f"csv:{path}", "-m", TINY, "--workers", "0", "--out", str(out)]
    result = runner.invoke(app, [*args, "--metric", "worst_group_acc", "--metric", "top1"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    values = {r["metric"]: r["value"] for r in records}
    groups = [values["group_acc[indoor]"], values["group_acc[outdoor]"]]
    assert values["worst_group_acc"] == min(groups)
    assert values["top1"] == pytest.approx(sum(groups) / 2)  # two images per group
    check = runner.invoke(app, ["data", "check", f"csv:{path}"])
    assert "group indoor: 2" in check.stdout and "group outdoor: 2" in check.stdout


def test_folder_groups_file(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "f", ["cat", "dog"], per_class=2)
    (root / "groups.csv").write_text("filepath,group\ncat/0.jpg,b\ncat/1.jpg,a\ndog/0.jpg,a\ndog/1.jpg,b\n")
    ds = load_dataset(f"folder:{root}")
    assert ds.group_names == ["a", "b"] and ds.groups == [1, 0, 0, 1]
    (root / "groups.csv").write_text("filepath,group\ncat/0.jpg,b\n")
    with pytest.raises(DataError, match=r"groups.csv gives no group for 3 of 4 image\(s\)"):
        load_dataset(f"folder:{root}")


def test_data_check_lists_every_problem_of_a_csv(tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / f"{i}.jpg", i)
    (tmp_path / "data.csv").write_text("filepath,caption,label\n0.jpg,a cat,cat\n,a dog,dog\n2.jpg,,\n")
    result = runner.invoke(app, ["data", "check", f"csv:{tmp_path / 'data.csv'}"])
    assert result.exit_code == 1
    problems = [line for line in result.stdout.splitlines() if "problem:" in line]
    assert len(problems) == 3, result.stdout
    assert "1 row(s) without a label (e.g. line 4)" in problems[0]
    assert "1 row(s) with an empty file path (e.g. line 3)" in problems[1]
    assert "1 row(s) with an empty caption (e.g. line 4)" in problems[2]
