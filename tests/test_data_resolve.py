"""The data layer's entry point `resolve`: each outcome (dataset, missing, bad split, no data root, generated,
folder:/csv:), one registry lookup per dataset and split, builders that read their registration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from starft_cli.data import registry
from starft_cli.data.base import ImageDataset
from starft_cli.data.registry import Missing, get_builder, load_dataset, resolve
from starft_cli.errors import DataError, DataRootError, SplitError, UsageError
from tests.layouts import LAYOUTS, make_pacs, make_waterbirds

TOY = "toy-resolve"


@pytest.fixture
def toy():
    """A registered toy dataset (``<root>/toy/<split>/<class>/*.png``) whose check records the splits it is asked
    for; removed from the registry afterwards."""
    from starft_cli.data.base import FileImageDataset
    from starft_cli.data.checks import image_files, subfolders

    registry._ensure_loaded()
    seen: dict[str, list] = {"check": [], "download": []}

    @registry.register_dataset(
        TOY,
        title="Toy (a test's)",
        folder="toy",
        layout="toy/<split>/<class>/*.png",
        source="made by the test",
        splits=("train", "test"),
        templates="single",
        check_splits=True,
        download=lambda root: seen["download"].append(root),
    )
    class Toy(registry.Builder):
        def build(self, root: Path, split: str) -> FileImageDataset:
            folders = subfolders(root / split)
            files = [(label, path) for label, folder in enumerate(folders) for path in image_files(folder)]
            return self.dataset(
                FileImageDataset,
                classnames=[f.name for f in folders] or ["nothing"],
                labels=[label for label, _ in files],
                paths=[path for _, path in files],
            )

        def check(self, root: Path, splits: tuple[str, ...] | None = None):
            seen["check"].append(splits)
            report = self.report(root)
            report.problems.extend(f"missing {root / s}" for s in splits or self.info.splits if not (root / s).is_dir())
            return report

    try:
        yield seen
    finally:
        registry._REGISTRY.pop(TOY)


def _toy_layout(data_root: Path, empty_test: bool = False) -> Path:
    from tests.imagegen import make_class_folders

    make_class_folders(data_root / "toy" / "train", ["cat", "dog"], per_class=2)
    if empty_test:
        (data_root / "toy" / "test" / "cat").mkdir(parents=True)
    else:
        make_class_folders(data_root / "toy" / "test", ["cat", "dog"], per_class=1)
    return data_root / "toy"


def test_a_present_dataset_resolves_to_its_default_split_with_its_registered_templates(tmp_path: Path):
    make_waterbirds(tmp_path)
    ds = resolve("waterbirds", tmp_path)
    assert isinstance(ds, ImageDataset)
    assert (ds.name, ds.split, ds.templates) == ("waterbirds", "test", "waterbirds")
    assert len(ds) == 8 and ds.groups is not None
    val = resolve("waterbirds", tmp_path, "val")
    assert val.split == "val" and len(val) == 8
    assert load_dataset("waterbirds", tmp_path, "val").labels == val.labels  # load_dataset = resolve or raise


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_builders_name_and_template_their_datasets_as_registered(name: str, tmp_path: Path):
    LAYOUTS[name](tmp_path)
    info = get_builder(name).info
    ds = resolve(name, tmp_path)
    assert isinstance(ds, ImageDataset), ds
    assert (ds.name, ds.templates, ds.split) == (name, info.templates, info.default_split)
    from starft_cli.data.manage import check_dataset

    assert check_dataset(name, tmp_path).name == name


def test_an_absent_dataset_is_missing_with_where_and_how_to_get_it(tmp_path: Path):
    missing = resolve("pacs", tmp_path)
    assert isinstance(missing, Missing)
    info = get_builder("pacs").info
    assert (missing.name, missing.root, missing.split) == ("pacs", tmp_path / "PACS", "test")
    assert missing.problems == (f"missing folder {tmp_path / 'PACS'}",)
    assert missing.hint == (
        f"Run `starft data check pacs --data-root {tmp_path}` for details. Layout: {info.layout}. Source: {info.source}"
    )
    assert missing.line() == f"pacs: missing folder {tmp_path / 'PACS'}. Layout: {info.layout}. Source: {info.source}"
    assert missing.short() == f"pacs (missing folder {tmp_path / 'PACS'})"
    with pytest.raises(DataError) as caught:
        load_dataset("pacs", tmp_path)
    assert (
        caught.value.message
        == f"dataset 'pacs' at {tmp_path / 'PACS'} is not laid out right: missing folder " + str(tmp_path / "PACS")
    )
    assert caught.value.hint == missing.hint


def test_a_broken_layout_is_missing_with_every_problem(tmp_path: Path):
    import shutil

    make_pacs(tmp_path)
    shutil.rmtree(tmp_path / "PACS" / "photo" / "dog")
    missing = resolve("pacs", tmp_path)
    assert isinstance(missing, Missing)
    assert missing.problems == (
        f"missing class folder {tmp_path / 'PACS' / 'photo' / 'dog'}",
        "test: group 'photo/dog' has no images (worst-group accuracy needs every group)",
    )
    with pytest.raises(DataError, match=r"not laid out right: missing class folder .* \(and 1 more problem\(s\)\)"):
        load_dataset("pacs", tmp_path)


def test_an_empty_split_is_missing(toy, tmp_path: Path):
    _toy_layout(tmp_path, empty_test=True)
    missing = resolve(TOY, tmp_path, "test")
    assert isinstance(missing, Missing) and missing.problems == ("the 'test' split holds no images",)
    assert resolve(TOY, tmp_path, "train").split == "train"


@pytest.mark.parametrize("call", ["resolve", "load_dataset", "plan", "check_split"])
def test_no_such_split_is_one_error_class_everywhere(call: str, tmp_path: Path):
    make_pacs(tmp_path)
    with pytest.raises(SplitError) as caught:
        if call == "resolve":
            resolve("pacs", tmp_path, "train")
        elif call == "load_dataset":
            load_dataset("pacs", tmp_path, "train")
        elif call == "check_split":
            registry.check_split(get_builder("pacs").info, "train")
        else:
            from starft_cli.eval.runner import plan
            from starft_cli.eval.suites import Suite, SuiteEntry

            plan(Suite("s", (SuiteEntry("pacs", ("top1",), split="train"),)), tmp_path)
    error = caught.value
    assert isinstance(error, DataError) and isinstance(error, UsageError) and error.exit_code == 2
    assert (error.message, error.hint) == ("dataset 'pacs' has no split 'train'", "Use one of test")


def test_finetune_on_a_split_the_data_lacks_says_which_splits_exist(tmp_path: Path):
    from typer.testing import CliRunner

    from starft_cli.cli.app import app
    from tests.imagegen import make_class_folders

    make_pacs(tmp_path)
    train = make_class_folders(tmp_path / "own", ["cat", "dog"], per_class=2)
    args = ["finetune", "--data", f"folder:{train}", "--val-data", "pacs", "--val-split", "val"]
    result = CliRunner().invoke(app, [*args, "--data-root", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "dataset 'pacs' has no split 'val'. Use one of test" in result.stderr


def test_a_registered_dataset_without_data_root_is_one_error_class(tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    for call in (lambda: resolve("pacs"), lambda: load_dataset("pacs"), lambda: check_dataset("pacs", None)):
        with pytest.raises(DataRootError, match=r"dataset 'pacs' needs `data_root`") as caught:
            call()
        assert isinstance(caught.value, UsageError) and caught.value.hint == "Point it at the folder holding PACS/"


def test_a_generated_dataset_is_made_on_first_resolve(tmp_path: Path):
    ds = resolve("spurious-digits", tmp_path, "val")
    assert isinstance(ds, ImageDataset)
    assert (ds.name, ds.split, ds.templates) == ("spurious-digits", "val", "digits")
    assert (tmp_path / "spurious-digits" / "manifest.json").is_file()
    assert get_builder("spurious-digits").info.generated


def test_folder_and_csv_refs_resolve_or_raise(tmp_path: Path):
    from tests.imagegen import make_class_folders

    root = make_class_folders(tmp_path / "f", ["cat", "dog"], per_class=2)
    ds = resolve(f"folder:{root}")
    assert isinstance(ds, ImageDataset) and ds.split == "test" and ds.classnames == ["cat", "dog"]
    names = tmp_path / "names.txt"
    names.write_text("house cat\nhot dog\n")
    assert resolve(f"folder:{root}", classnames_file=names).classnames == ["house cat", "hot dog"]
    split_root = make_class_folders(tmp_path / "s" / "train", ["a", "b"], per_class=1).parent
    assert resolve(f"folder:{split_root}", split="train").split == "train"
    rows = "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(root.rglob("*.jpg")))
    (tmp_path / "data.csv").write_text("filepath,label\n" + rows)
    csv = resolve(f"csv:{tmp_path / 'data.csv'}")
    assert isinstance(csv, ImageDataset) and csv.classnames == ["cat", "dog"] and len(csv) == 4
    with pytest.raises(DataError, match="no such folder"):  # the user's own data: an error, not a Missing
        resolve(f"folder:{tmp_path / 'nowhere'}")


def test_the_registration_says_whether_a_check_narrows_to_splits(toy, tmp_path: Path):
    from starft_cli.data.manage import check_dataset

    _toy_layout(tmp_path)
    assert isinstance(resolve(TOY, tmp_path, "train"), ImageDataset)
    assert check_dataset(TOY, tmp_path).ok
    assert check_dataset(TOY, tmp_path, splits=("test",)).ok
    assert toy["check"] == [("train",), None, ("test",)]  # declared check_splits: narrowed where asked
    # without check_splits the check is never given splits (pacs' check takes none)
    make_pacs(tmp_path)
    assert check_dataset("pacs", tmp_path, splits=("test",)).ok


def test_download_comes_from_the_registration(toy, tmp_path: Path):
    from starft_cli.data.manage import download_dataset

    result = download_dataset(TOY, tmp_path / "d")
    assert result.downloaded and result.root == tmp_path / "d" / "toy" and toy["download"] == [tmp_path / "d"]
    manual = download_dataset("pacs", tmp_path)
    assert not manual.downloaded and manual.instructions[-1] == f"expected at: {tmp_path / 'PACS'}"
    with pytest.raises(DataRootError, match="data download needs `data_root`"):
        download_dataset(TOY, None)
    assert get_builder("cifar10").info.download is not None and get_builder("pacs").info.download is None


def test_the_registry_is_read_once_per_dataset_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from starft_cli.data import manage
    from starft_cli.eval.runner import plan
    from starft_cli.eval.suites import Suite, SuiteEntry

    calls: Counter[str] = Counter()
    real = registry.get_builder

    def counting(name: str):
        calls[name] += 1
        return real(name)

    monkeypatch.setattr(registry, "get_builder", counting)
    monkeypatch.setattr(manage, "get_builder", counting)
    make_pacs(tmp_path)
    make_waterbirds(tmp_path)
    entries = (
        SuiteEntry("pacs", ("top1",)),
        SuiteEntry("waterbirds", ("top1",)),
        SuiteEntry("cifar10", ("top1",)),  # absent: missing
    )
    prepared = plan(Suite("s", entries), tmp_path, skip_missing=True)
    assert [d.entry.dataset for d in prepared.datasets] == ["pacs", "waterbirds"]
    assert prepared.missing_names == ["cifar10"]
    assert calls == {"pacs": 1, "waterbirds": 1, "cifar10": 1}
    calls.clear()
    plan(Suite("s", (SuiteEntry("waterbirds", ("adjusted_avg_acc",)),)), tmp_path)
    assert calls == {"waterbirds": 2}  # the test split, then the training split's groups
    calls.clear()
    manage.check_dataset("pacs", tmp_path, deep=True)
    manage.download_dataset("pacs", tmp_path)
    assert calls == {"pacs": 2}  # one per request
