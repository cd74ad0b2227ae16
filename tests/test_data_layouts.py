"""Every registered dataset on a generated copy of its real on-disk layout: check, load, and broken layouts."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.registry import list_datasets, load_dataset
from starft_cli.errors import DataError
from tests.layouts import LAYOUTS, cars_annotations, write_mat

runner = CliRunner()

# name -> (number of samples in the default split, number of class names, groups or None, class subset or None)
EXPECTED = {
    "imagenet": (6, 1000, None, None),
    "imagenet-v2": (6, 1000, None, None),
    "imagenet-sketch": (6, 1000, None, None),
    "imagenet-r": (4, 1000, None, [1, 2]),
    "imagenet-a": (4, 1000, None, [6, 11]),  # n01498041 stingray, n01531178 goldfinch
    "waterbirds": (8, 2, 4, None),
    "pacs": (28, 7, 28, None),
    "cifar10": (10, 10, None, None),
    "cifar100": (12, 100, None, None),
    "cifar10.2": (10, 10, None, None),
    "cifar10.02": (20, 10, 20, None),
    "stl10": (10, 10, None, None),
    "caltech101": (7, 2, None, None),  # the seeded 0.6/0.2/0.2 draw leaves 7 of 64 images in test
    "flowers102": (6, 102, None, None),
    "stanford-cars": (6, 3, None, None),
    "iwildcam": (6, 3, None, None),
    "fmow": (8, 62, 6, None),
    "spurious-digits": (1350, 5, 25, None),
}


def test_every_registered_dataset_has_a_generated_layout():
    assert sorted(LAYOUTS) == list_datasets()
    assert sorted(EXPECTED) == list_datasets()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_check_passes_and_dataset_loads(name: str, tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    LAYOUTS[name](tmp_path)
    report = check_dataset(name, tmp_path, deep=True)
    assert report.ok, report.problems
    assert any(k.endswith("images") and v > 0 for k, v in report.counts.items())
    ds = load_dataset(name, tmp_path)
    size, classes, groups, subset = EXPECTED[name]
    assert len(ds) == size
    assert len(ds.classnames) == classes
    assert ds.get_image(0).mode == "RGB"
    assert all(0 <= y < classes for y in ds.labels)
    if groups is None:
        assert ds.groups is None
    else:
        assert len(ds.group_names) == groups and len(ds.groups) == len(ds)
    assert ds.class_subset == subset
    image, label = load_dataset(name, tmp_path, transform=lambda im: im.size)[0]
    assert isinstance(image, tuple) and label == ds.labels[0]


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _break_cifar100_meta(root: Path) -> None:
    with (root / "cifar-100-python" / "meta").open("wb") as handle:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(99)]}, handle, protocol=2)


BROKEN = [
    ("imagenet", lambda r: shutil.rmtree(r / "imagenet" / "val"), "missing folder"),
    ("imagenet-v2", lambda r: (r / "imagenetv2-matched-frequency-format-val" / "abc").mkdir(), "not a class-index"),
    ("imagenet-sketch", lambda r: (r / "imagenet-sketch" / "sketch" / "n99999999").mkdir(), "not an ImageNet wnid"),
    ("imagenet-r", lambda r: (r / "imagenet-r" / "renditions").mkdir(), "not an ImageNet wnid"),
    ("imagenet-a", lambda r: shutil.rmtree(r / "imagenet-a"), "missing folder"),
    ("waterbirds", lambda r: next((r / "waterbird_complete95_forest2water2").rglob("*.jpg")).unlink(), "are missing"),
    ("pacs", lambda r: shutil.rmtree(r / "PACS" / "sketch"), "missing domain folder"),
    ("cifar10", lambda r: (r / "cifar-10-batches-py" / "test_batch").unlink(), "test_batch"),
    ("cifar100", _break_cifar100_meta, "names 99 classes, expected 100"),
    ("cifar10.2", lambda r: (r / "cifar-10.2" / "cifar102_test.npz").write_bytes(b"junk"), "cannot read"),
    ("cifar10.02", lambda r: shutil.rmtree(r / "cifar-10-batches-py"), "missing folder"),
    ("stl10", lambda r: _truncate(r / "stl10_binary" / "test_X.bin", 1000), "96x96x3"),
    ("caltech101", lambda r: (r / "caltech101" / "101_ObjectCategories" / "spaceship").mkdir(), "not Caltech-101"),
    ("flowers102", lambda r: (r / "flowers-102" / "jpg" / "image_00003.jpg").unlink(), "missing"),
    ("stanford-cars", lambda r: (r / "stanford_cars" / "devkit" / "cars_meta.mat").unlink(), "cars_meta.mat"),
    ("iwildcam", lambda r: next((r / "iwildcam_v2.0" / "train").iterdir()).unlink(), "images are missing"),
    ("fmow", lambda r: (r / "fmow_v1.1" / "country_code_mapping.csv").unlink(), "country_code_mapping.csv"),
]


def test_every_dataset_has_a_broken_case():
    # a generated dataset (spurious-digits) repairs itself: a damaged copy is generated again
    # (tests/test_demo.py::test_damaged_copy_is_detected_and_generated_again)
    generated = ["spurious-digits"]
    assert sorted(name for name, _, _ in BROKEN) == [n for n in list_datasets() if n not in generated]


@pytest.mark.parametrize(("name", "breaker", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_check_names_the_problem(name: str, breaker, expected: str, tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    LAYOUTS[name](tmp_path)
    breaker(tmp_path)
    report = check_dataset(name, tmp_path)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(DataError, match="not laid out right"):
        load_dataset(name, tmp_path)


def test_deep_check_reports_unreadable_images(tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    LAYOUTS["pacs"](tmp_path)
    victim = tmp_path / "PACS" / "photo" / "dog" / "0.jpg"
    _truncate(victim, 40)
    assert check_dataset("pacs", tmp_path).ok  # the layout itself is right
    report = check_dataset("pacs", tmp_path, deep=True)
    assert report.counts["test unreadable"] == 1
    assert any("unreadable" in p and "0.jpg" in p for p in report.problems)


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(DataError) as info:
        load_dataset("waterbird", "/nowhere")
    assert "Did you mean waterbirds" in info.value.one_line()


def test_imagenet_r_subset_follows_the_folders_present(tmp_path: Path):
    from tests.layouts import make_wnid_folders

    make_wnid_folders(tmp_path / "imagenet-r", wnids=("n01494475", "n01443537"), suffix=".jpg")
    ds = load_dataset("imagenet-r", tmp_path)
    assert ds.class_subset == [1, 4]  # ImageNet order, whatever the creation order
    assert sorted(set(ds.labels)) == [1, 4]


def test_imagenet_a_refuses_classes_outside_its_published_list(tmp_path: Path):
    from starft_cli.data.manage import check_dataset
    from tests.layouts import make_wnid_folders

    make_wnid_folders(tmp_path / "imagenet-a", wnids=("n01498041", "n01440764"), suffix=".jpg")  # tench is not in A
    report = check_dataset("imagenet-a", tmp_path)
    assert report.problems == [
        f"{tmp_path / 'imagenet-a'} has wnid folder(s) that are not among ImageNet-A's 200 classes: n01440764"
    ]
    from starft_cli.data.checks import asset_lines

    assert len(asset_lines("imagenet_a_wnids.txt")) == len(asset_lines("imagenet_r_wnids.txt")) == 200


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path: Path):
    from tests.layouts import make_cifar10

    make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as handle:
        pickle.dump({"data": Evil(), "labels": [0]}, handle, protocol=2)
    from starft_cli.data.manage import check_dataset

    report = check_dataset("cifar10", tmp_path)
    assert any("refusing to load" in p for p in report.problems), report.problems
    assert (tmp_path / "victim").is_dir()


def test_official_cifar_files_go_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """When the md5 sums match torchvision's list, torchvision's own CIFAR10 reader reads the files."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import calculate_md5

    from starft_cli.data.cifar import Cifar10
    from tests.layouts import make_cifar10

    root = make_cifar10(tmp_path)
    md5 = lambda name: calculate_md5(str(root / name))  # noqa: E731
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5("batches.meta")})
    assert Cifar10()._official(root)
    images, labels, names = Cifar10().read(root, "test")
    ours = load_dataset("cifar10", tmp_path)  # through torchvision now as well
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", "0" * 32]])
    restricted = Cifar10().read(root, "test")
    assert np.array_equal(images, restricted[0]) and labels == restricted[1] and names == restricted[2]
    assert np.array_equal(np.asarray(ours.get_image(0)), images[0])


def test_mat_labels_map_to_zero_based_classes_and_bad_files_are_named(tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    root = LAYOUTS["stanford-cars"](tmp_path)
    # one annotation only: MATLAB stores a 1x1 struct, which loads as a scalar
    write_mat(root / "cars_test_annos_withlabels.mat", {"annotations": cars_annotations(["00005.jpg"], [3])})
    cars = load_dataset("stanford-cars", tmp_path, "test")
    assert [p.name for p in cars.paths] == ["00005.jpg"] and cars.labels == [2]
    assert cars.classnames[2] == "Audi TT RS Coupe 2012"
    assert load_dataset("stanford-cars", tmp_path, "train").labels == [0, 0, 1, 1, 2, 2]

    flowers = LAYOUTS["flowers102"](tmp_path)
    write_mat(flowers / "setid.mat", {"trnid": np.array([[1.0, 3.0]]), "valid": np.array([[7.0]]), "tstid": 18.0})
    assert load_dataset("flowers102", tmp_path, "val").paths == [flowers / "jpg" / "image_00007.jpg"]
    assert load_dataset("flowers102", tmp_path, "val").labels == [0]
    assert load_dataset("flowers102", tmp_path, "test").labels == [2]  # imagelabels.mat holds 1..3

    write_mat(flowers / "setid.mat", {"trnid": np.array([[1.0]]), "valid": np.array([[2.0]])})
    assert any("setid.mat has no variable 'tstid'" in p for p in check_dataset("flowers102", tmp_path).problems)
    (root / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file")
    problems = check_dataset("stanford-cars", tmp_path).problems
    assert len(problems) == 1 and problems[0].startswith(f"cannot read {root / 'devkit' / 'cars_meta.mat'}")


def test_caltech_train_val_test_splits_are_a_seeded_draw_that_partitions_the_images(tmp_path: Path):
    from starft_cli.data.protocols import require_protocol
    from starft_cli.data.transfer import caltech_split_of

    LAYOUTS["caltech101"](tmp_path)  # accordion and airplanes, 32 images each
    parts = {s: load_dataset("caltech101", tmp_path, s) for s in ("train", "val", "test")}
    everything = load_dataset("caltech101", tmp_path, "all")
    # the seeded per-image draw (seed 0): accordion 18/9/5, airplanes 23/7/2
    assert {s: len(d) for s, d in parts.items()} == {"train": 41, "val": 16, "test": 7} and len(everything) == 64
    assert sorted(p for d in parts.values() for p in d.paths) == sorted(everything.paths)  # a partition
    assert parts["train"].classnames == ["accordion", "airplane"]
    again = load_dataset("caltech101", tmp_path, "test")
    assert again.paths == parts["test"].paths  # deterministic
    # the rule's fractions (FLYP's 0.6/0.2/0.2) over many images, and a category's draw depends on itself only
    rule = require_protocol("caltech101").split
    assert rule["seed"] == 0 and rule["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    draw = caltech_split_of("Faces", 20000, rule)
    assert [draw.count(s) for s in ("train", "val", "test")] == [12024, 3951, 4025]
    assert caltech_split_of("accordion", 32, rule)[:5] == ["train", "train", "val", "train", "test"]


def test_waterbirds_groups_are_label_by_place(tmp_path: Path):
    LAYOUTS["waterbirds"](tmp_path)
    ds = load_dataset("waterbirds", tmp_path, "test")
    assert ds.group_names == ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
    assert sorted(set(zip(ds.labels, ds.groups, strict=True))) == [(0, 0), (0, 1), (1, 2), (1, 3)]


# ---------------------------------------------------------------------------------------------------------------
# starft data list | check | download
# ---------------------------------------------------------------------------------------------------------------


def test_cli_data_list_shows_every_dataset(tmp_path: Path):
    LAYOUTS["pacs"](tmp_path)
    result = runner.invoke(app, ["data", "list", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in list_datasets():
        assert name in result.stdout
    lines = result.stdout.splitlines()
    pacs = next(i for i, line in enumerate(lines) if line.startswith("pacs"))
    assert lines[pacs + 1].rstrip().endswith("· present")


def test_cli_data_check_good_and_broken(tmp_path: Path):
    LAYOUTS["waterbirds"](tmp_path)
    good = runner.invoke(app, ["data", "check", "waterbirds", "--data-root", str(tmp_path)])
    assert good.exit_code == 0, good.output
    assert "OK" in good.stdout and "test group waterbird on water: 2" in good.stdout
    (tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv").unlink()
    bad = runner.invoke(app, ["data", "check", "waterbirds", "--data-root", str(tmp_path)])
    assert bad.exit_code == 1
    assert "problem: missing" in bad.stdout and "metadata.csv" in bad.stdout
    assert "get it from:" in bad.stdout
    assert bad.stderr.strip() == "error: waterbirds is not laid out right (1 problem(s) above)"


def test_cli_data_check_unknown_name(tmp_path: Path):
    result = runner.invoke(app, ["data", "check", "imagenet-x", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown dataset 'imagenet-x'" in result.stderr and "Did you mean" in result.stderr


def test_cli_data_download_without_source_prints_instructions(tmp_path: Path):
    result = runner.invoke(app, ["data", "download", "waterbirds", "--data-root", str(tmp_path)])
    assert result.exit_code == 1  # nothing was downloaded: a script must not go on
    assert "get it from:" in result.stdout and "metadata.csv" in result.stdout
    assert result.stderr.startswith("error: waterbirds was not downloaded (no public download source)")
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing created


def test_cli_data_check_generic_folder_and_csv(tmp_path: Path):
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "mine", ["cat", "dog"], per_class=2, size=(32, 32))
    good = runner.invoke(app, ["data", "check", f"folder:{root}", "--deep"])
    assert good.exit_code == 0, good.output
    assert "images: 4" in good.stdout and "class cat: 2" in good.stdout and "unreadable: 0" in good.stdout
    (tmp_path / "list.csv").write_text("filepath,label\nmine/cat/0.jpg,cat\nmine/cat/9.jpg,cat\n")
    bad = runner.invoke(app, ["data", "check", f"csv:{tmp_path / 'list.csv'}"])
    assert bad.exit_code == 1
    assert "problem: 1 listed image(s) are missing" in bad.stdout and "9.jpg" in bad.stdout


def test_fmow_splits_follow_wilds_time_rule(tmp_path: Path):
    LAYOUTS["fmow"](tmp_path)
    sizes = {
        split: len(load_dataset("fmow", tmp_path, split)) for split in ("train", "id_val", "id_test", "val", "test")
    }
    assert sizes == {"train": 6, "id_val": 6, "id_test": 6, "val": 6, "test": 8}
    test = load_dataset("fmow", tmp_path, "test")
    regions = {test.group_names[g] for g in test.groups}
    assert regions == {"Americas", "Europe", "Africa", "Other"}
    # images are numbered by their row in rgb_metadata.csv, sequestered and unused rows included
    assert [p.name for p in test.paths][:2] == ["rgb_img_36.png", "rgb_img_37.png"]
