"""The user's data as it arrives on disk: split folders, symlinked folders, macOS companion files, CSVs from
spreadsheets, CIFAR batches pickled by Python 3 (issue 19 items 4 and 9, issue 20 items 2, 6 and 14)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.manage import check_dataset
from starft_cli.data.registry import load_dataset, resolve
from starft_cli.errors import DataError, SplitError
from tests.imagegen import make_class_folders, make_image

runner = CliRunner()
TINY = "starft-tiny:none"


def _split_folder(root: Path) -> Path:
    """``root/train/<a,b,c>`` with 3 images each (9) and ``root/test/<a,b,c>`` with 2 each (6)."""
    make_class_folders(root / "train", ["a", "b", "c"], per_class=3)
    make_class_folders(root / "test", ["a", "b", "c"], per_class=2)
    return root


# --- issue 19 item 4: one rule for split folders everywhere ------------------------------------------------------


def test_a_split_folder_resolves_to_its_test_split_not_to_two_classes(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "d")
    test = resolve(f"folder:{root}")
    assert (test.split, len(test), test.classnames) == ("test", 6, ["a", "b", "c"])
    assert all(p.parent.parent.name == "test" for p in test.paths)
    train = load_dataset(f"folder:{root}", split="train")  # what finetune reads
    assert (train.split, len(train), train.classnames) == ("train", 9, ["a", "b", "c"])
    with pytest.raises(SplitError) as caught:
        load_dataset(f"folder:{root}", split="val")  # what --val-split val reads
    assert caught.value.message == f"{root} has no 'val' split folder (it has test, train)"


def test_a_split_folder_without_a_test_split_names_the_splits_it_has(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "d" / "train", ["a", "b"], per_class=1)
    make_class_folders(tmp_path / "d" / "val", ["a", "b"], per_class=1)
    with pytest.raises(SplitError) as caught:
        resolve(f"folder:{tmp_path / 'd'}")
    assert caught.value.one_line() == (
        f"{tmp_path / 'd'} has no 'test' split folder (it has train, val). Pass one of them as the split (the "
        "default is test)"
    )
    assert len(load_dataset(f"folder:{tmp_path / 'd'}", split="val")) == 2


def test_a_class_named_like_a_split_stays_a_class(tmp_path: Path) -> None:
    # CIFAR-100 has a class 'train'; a folder of images named 'test' is a class too
    root = make_class_folders(tmp_path / "d", ["bus", "test", "train"], per_class=2)
    ds = resolve(f"folder:{root}")
    assert ds.classnames == ["bus", "test", "train"] and len(ds) == 6
    assert len(load_dataset(f"folder:{root}", split="train")) == 6  # one folder per class: the whole folder


def test_split_folders_beside_class_folders_are_refused(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "d")
    make_class_folders(root, ["extra"], per_class=1)
    with pytest.raises(DataError, match=r"mixes split folders \(test, train\) with other folders \(extra\)"):
        resolve(f"folder:{root}")


def test_data_check_counts_every_split_of_a_split_folder(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "d")
    report = check_dataset(f"folder:{root}", None, deep=True)
    assert report.ok, report.problems
    assert report.counts["train images"] == 9 and report.counts["test images"] == 6
    assert report.counts["train classes"] == 3 and report.counts["test class b"] == 2
    assert "classes" not in report.counts and report.counts["test unreadable"] == 0
    (root / "test" / "c").rename(root / "test" / "d")
    notes = check_dataset(f"folder:{root}", None).notes
    assert notes == ["the splits have different class folders (test lacks c; train lacks d): class indices differ "
                     "between them"]  # fmt: skip


def test_eval_and_probe_of_a_split_folder_read_its_test_split(tiny, tmp_path: Path) -> None:
    from starft_cli.probe import probe
    from starft_cli.reports.schema import read_records

    root = _split_folder(tmp_path / "d")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["eval", "--data", f"folder:{root}", "-m", TINY, "--workers", "0", "--device", "cpu", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert records and {(r["split"], r["num_samples"], r["num_classes"]) for r in records} == {("test", 6, 3)}
    frame = probe(tiny, tiny, f"folder:{root}", pools=["texture"], reg_batch_size=3)
    assert set(frame["split"]) == {"test"} and set(frame["num_samples"]) == {6}


# --- issue 19 item 9: files silently left out ----------------------------------------------------------------------


def _linked_class(tmp_path: Path) -> Path:
    """``data/cat`` whose two sub-folders are symlinks to folders of 6 images each (12), one link looping back to
    ``data``, and ``data/dog`` with 6 images and 6 macOS ``._*`` companions."""
    outside = make_class_folders(tmp_path / "elsewhere", ["x1", "x2"], per_class=6)
    cat = tmp_path / "data" / "cat"
    cat.mkdir(parents=True)
    os.symlink(outside / "x1", cat / "part1")
    os.symlink(outside / "x2", cat / "part2")
    os.symlink("..", cat / "loop")
    dog = make_class_folders(tmp_path / "data", ["dog"], per_class=6) / "dog"
    for i in range(6):
        (dog / f"._{i}.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    return tmp_path / "data"


def test_symlinked_folders_are_followed_once_and_companion_files_skipped_with_a_count(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = _linked_class(tmp_path)
    ds = resolve(f"folder:{root}")
    assert ds.classnames == ["cat", "dog"] and ds.labels.count(0) == 12 and ds.labels.count(1) == 6
    assert not any(p.name.startswith("._") for p in ds.paths)
    assert ds.left_out == [
        "skipped 6 macOS '._*' companion file(s) (AppleDouble metadata, not images)",
        f"skipped 1 symlinked folder(s) that loop back or were already listed through another link, e.g. "
        f"{root / 'cat' / 'loop'}",
    ]
    os.unlink(root / "cat" / "loop")  # torchvision has no loop guard
    assert len(ImageFolder(str(root))) == 24  # its 12 + 6 images, and the 6 companions as images
    assert len(resolve(f"folder:{root}")) == 18


def test_a_macosx_folder_from_a_zip_is_not_a_class(tmp_path: Path) -> None:
    from starft_cli.images import expand_image_args

    root = make_class_folders(tmp_path / "d", ["cat", "dog"], per_class=2)
    for name in ("cat", "dog"):  # what macOS's zip adds: __MACOSX/<class>/._<file>
        (root / "__MACOSX" / name).mkdir(parents=True)
        (root / "__MACOSX" / name / "._0.jpg").write_bytes(b"\x00\x05\x16\x07")
    ds = resolve(f"folder:{root}")
    assert ds.classnames == ["cat", "dog"] and len(ds) == 4
    assert ds.left_out == ["skipped 1 macOS '__MACOSX' folder(s) (zip metadata, not images)"]
    (tmp_path / "d2").mkdir()
    (root / "__MACOSX").rename(tmp_path / "d2" / "__MACOSX")
    make_class_folders(tmp_path / "d2" / "cat", ["inner"], per_class=2)
    (tmp_path / "d2" / "__MACOSX").rename(tmp_path / "d2" / "cat" / "__MACOSX")
    assert len(resolve(f"folder:{tmp_path / 'd2'}")) == 2  # inside a class folder too
    assert len(expand_image_args([str(tmp_path / "d2")])) == 2


def test_data_check_counts_linked_images_and_reports_the_skipped_files(tmp_path: Path) -> None:
    root = _linked_class(tmp_path)
    result = runner.invoke(app, ["data", "check", f"folder:{root}", "--deep"])
    assert result.exit_code == 0, result.output
    assert "  images: 18\n" in result.stdout and "  class cat: 12\n" in result.stdout
    assert "  note: skipped 6 macOS '._*' companion file(s)" in result.stdout and "unreadable: 0" in result.stdout


def test_training_skips_companion_files(tmp_path: Path) -> None:
    root = _linked_class(tmp_path)
    args = ["finetune", "--data", f"folder:{root}", "--backbone", TINY, "--workers", "0", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--batch-size", "6", "--max-steps", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "skipped 6 macOS '._*' companion file(s)" in result.stderr


def test_every_registered_folder_layout_skips_companion_files(tmp_path: Path) -> None:
    from tests.layouts import make_imagenet, make_imagenet_r, make_imagenet_v2, make_pacs

    make_imagenet(tmp_path)
    make_imagenet_v2(tmp_path)
    make_imagenet_r(tmp_path)
    make_pacs(tmp_path)
    for folder in ("imagenet/val/n01440764", "imagenetv2-matched-frequency-format-val/0", "PACS/photo/dog"):
        (tmp_path / folder / "._x.jpg").write_bytes(b"\x00\x05\x16\x07")
    first_wnid = sorted(p.name for p in (tmp_path / "imagenet-r").iterdir())[0]
    (tmp_path / "imagenet-r" / first_wnid / "._y.jpg").write_bytes(b"\x00\x05\x16\x07")
    for name in ("imagenet", "imagenet-v2", "imagenet-r", "pacs"):
        report = check_dataset(name, tmp_path, deep=True)
        assert report.ok, (name, report.problems)
        assert any("skipped 1 macOS '._*' companion file(s)" in n for n in report.notes), (name, report.notes)
        ds = resolve(name, tmp_path)
        assert ds.left_out[0].startswith("skipped 1 macOS") and not any(p.name.startswith("._") for p in ds.paths)


def test_classify_follows_links_and_globs_without_hanging_on_loops(tmp_path: Path, caplog) -> None:
    from starft_cli.images import expand_image_args

    root = _linked_class(tmp_path)
    assert len(expand_image_args([str(root)])) == 18
    recursive = expand_image_args([str(root / "**" / "*.jpg")])  # the standard library's glob never ends here
    assert len(recursive) == 18 and not any(p.name.startswith("._") for p in recursive)
    assert len(expand_image_args([str(root / "*")])) == 18  # folders a pattern matches are expanded as folders
    assert "skipped 6 macOS '._*' companion file(s)" in caplog.text


# --- issue 20 items 2, 6 and 14: CSVs, CIFAR batches -----------------------------------------------------------------


def _images(tmp_path: Path, n: int = 3) -> None:
    for i in range(n):
        make_image(tmp_path / f"{i}.jpg", i)


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"\xef\xbb\xbffilepath,label\r\n0.jpg,cat\r\n1.jpg,dog\r\n2.jpg,cat\r\n")
    ds = load_dataset(f"csv:{tmp_path / 'data.csv'}")
    assert ds.classnames == ["cat", "dog"] and ds.labels == [0, 1, 0] and ds.paths[0] == tmp_path / "0.jpg"
    (tmp_path / "classnames.txt").write_bytes(b"\xef\xbb\xbfcat\ndog\n")  # a BOM in a class names file too
    assert load_dataset(f"csv:{tmp_path / 'data.csv'}").classnames == ["cat", "dog"]
    (tmp_path / "classnames.txt").unlink()
    (tmp_path / "data.tsv").write_bytes("filepath\tlabel\r\n0.jpg\tcat\r\n1.jpg\tdog\r\n".encode("utf-16"))
    assert load_dataset(f"csv:{tmp_path / 'data.tsv'}").labels == [0, 1]  # Excel's "Unicode Text": UTF-16, tabs


def test_classify_labels_file_with_a_byte_order_mark(images: list[Path], tmp_path: Path) -> None:
    import csv
    import io

    (tmp_path / "labels.txt").write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\n")
    args = ["classify", str(images[0]), "--labels-file", str(tmp_path / "labels.txt"), "--format", "csv"]
    result = runner.invoke(app, [*args, "--model", TINY, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(r["label"] for r in csv.DictReader(io.StringIO(result.stdout))) == ["cat", "dog"]
    (tmp_path / "labels.txt").write_bytes("chat\ncaf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, [*args, "--model", TINY, "--device", "cpu"])
    assert result.exit_code == 2 and f"labels file {tmp_path / 'labels.txt'} is not UTF-8 text" in result.stderr


def test_csv_that_is_not_utf8_is_one_line_naming_the_line(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "data.csv").write_bytes("filepath,label\n0.jpg,café\n".encode("latin-1"))
    with pytest.raises(DataError) as caught:
        load_dataset(f"csv:{tmp_path / 'data.csv'}")
    assert caught.value.message == f"{tmp_path / 'data.csv'} is not UTF-8 text (byte 0xe9 on line 2)"
    result = runner.invoke(app, ["data", "check", f"csv:{tmp_path / 'data.csv'}"])
    assert result.exit_code == 1 and "is not UTF-8 text (byte 0xe9 on line 2). Save it as UTF-8" in result.output
    assert "Traceback" not in result.output


def test_csv_rows_with_extra_or_missing_fields_are_refused_naming_them(tmp_path: Path) -> None:
    _images(tmp_path)
    text = 'filepath,label,caption\n0.jpg,cat,"a cat, sitting"\n1.jpg,dog,a dog, running\n2.jpg,cat\n'
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(DataError) as caught:
        load_dataset(f"csv:{tmp_path / 'data.csv'}")
    assert caught.value.problems == [
        f"{tmp_path / 'data.csv'}: 2 row(s) whose number of fields differs from the header's 3 (line 3 has 4; line 4 "
        "has 2). Quote values that hold the delimiter, and give every row every column"
    ]
    (tmp_path / "groups.csv").write_text("filepath,group\nx/0.jpg,a,b\n")
    make_class_folders(tmp_path, ["x", "y"], per_class=1)
    with pytest.raises(DataError, match=r"groups.csv: 1 row\(s\) whose number of fields .* \(line 2 has 3\)"):
        load_dataset(f"folder:{tmp_path}")


def test_waterbirds_metadata_rows_of_the_wrong_width_are_a_check_problem(tmp_path: Path) -> None:
    from tests.layouts import make_waterbirds

    root = make_waterbirds(tmp_path)
    meta = root / "metadata.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes() + b"99,x.jpg,0,2,0,p.jpg,extra\n")
    lines = len(meta.read_text(encoding="utf-8-sig").splitlines())
    report = check_dataset("waterbirds", tmp_path)
    assert report.problems == [
        f"{meta}: 1 row(s) whose number of fields differs from the header's 6 (line {lines} has 7). Quote values "
        "that hold the delimiter, and give every row every column"
    ]
    assert report.counts["test images"] == 8  # the BOM does not hide the first column


def test_cifar_batches_pickled_with_bytes_keys_read(tmp_path: Path) -> None:
    """Python 3 re-packs (``pickle.dump({b'data': ...})``) have bytes keys and bytes class names."""
    from starft_cli.data.cifar import read_cifar_pickle

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 4), ("test", 3)):
        batch = {b"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n))}
        (root / split).write_bytes(pickle.dumps(batch))
    names = [f"class_{i}".encode() for i in range(100)]
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}))
    assert set(read_cifar_pickle(root / "test")) == {"data", "fine_labels"}
    ds = load_dataset("cifar100", tmp_path, "test")
    assert len(ds) == 3 and ds.labels == [0, 1, 2] and ds.classnames[:2] == ["class 0", "class 1"]
    assert check_dataset("cifar100", tmp_path).counts["train images"] == 4


# --- issue 20 items 11 and 14: download into a folder that cannot take it, a check that writes nothing -------------


def test_data_check_of_a_generated_dataset_writes_nothing_and_says_how_to_generate_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", "spurious-digits", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert f"problem: not generated at {tmp_path / 'spurious-digits'}" in result.stdout
    assert f"generate it with: starft data download spurious-digits --data-root {tmp_path}" in result.stdout


@pytest.mark.parametrize("kind", ["read-only", "a file"])
def test_download_into_a_folder_that_cannot_take_it_says_so(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    if kind == "a file":  # a real failure: the data root is a file
        target = tmp_path / "file"
        target.write_text("x")
        why = "not a folder"
    else:  # the error a read-only folder gives (root may write anywhere, so it is injected where the OS raises it)
        target = tmp_path / "ro"
        target.mkdir()

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
        why = "not writable"
    result = runner.invoke(app, ["data", "download", "spurious-digits", "--data-root", str(target)])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"error: cannot write spurious-digits into {target}: {why} (")
    assert "--data-root" in line and "network" not in line and len(line.splitlines()) == 1


def test_deep_check_names_every_unreadable_image_up_to_five_and_counts_the_rest(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", ["a", "b"], per_class=4)
    broken = sorted(root.rglob("*.jpg"))[:7]
    for path in broken:
        path.write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["data", "check", f"folder:{root}", "--deep", "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["counts"]["unreadable"] == 7 and payload["unreadable"] == [str(p) for p in broken]
    (problem,) = payload["problems"]
    assert problem.startswith("7 unreadable image(s): ") and problem.endswith("; and 2 more (`--json` lists every one)")
    assert all(str(p) in problem for p in broken[:5]) and str(broken[5]) not in problem


def test_unreadable_images_lists_every_file_that_does_not_decode_in_dataset_order(tmp_path: Path) -> None:
    """The data layer's "check the files of this split decode" (for a check before training's step 0)."""
    from starft_cli.data.checks import Unreadable, unreadable_images

    root = make_class_folders(tmp_path / "d", ["a", "b"], per_class=2)
    ds = load_dataset(f"folder:{root}", split="train")
    ds.paths[1].write_bytes(b"\xff\xd8\xff truncated")
    ds.paths[3].unlink()
    done: list[tuple[int, int]] = []
    bad = unreadable_images(ds, progress=lambda i, n: done.append((i, n)))
    assert [b.index for b in bad] == [1, 3] and done[-1] == (4, 4) and len(done) == 4
    assert bad[1] == Unreadable(3, f"no such file: {ds.paths[3]}")
    assert bad[0].message.startswith(str(ds.paths[1]))
    assert [b.index for b in unreadable_images(ds, skip_missing=True)] == [1]
