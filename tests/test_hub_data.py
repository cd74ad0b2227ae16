"""Benchmarks from their Hub webdataset copies: the same data as the folder layouts, downloads (resume, checksum,
offline), damaged and partial copies, and `starft eval --download` end to end; all against the local test Hub."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.data.registry import Missing, resolve
from starft_cli.data.sources import hub as hubsrc
from starft_cli.errors import DataError, SplitError
from tests.hubdata import repo_files, serve_dataset, write_shards
from tests.hubserver import HubServer, hub  # noqa: F401  (fixture)
from tests.layouts import LAYOUTS

runner = CliRunner()

# registered dataset -> the split its Hub copy is registered under
COPIES = {
    "imagenet": "val",
    "imagenet-v2": "test",
    "imagenet-sketch": "test",
    "imagenet-r": "test",
    "imagenet-a": "test",
    "cifar10": "test",
    "cifar100": "test",
    "stl10": "test",
    "stanford-cars": "test",
    "flowers102": "test",
    "iwildcam": "test",
    "fmow": "test",
}


def _local(name: str, split: str, data_root: Path):
    LAYOUTS[name](data_root)
    ds = resolve(name, data_root, split)
    assert not isinstance(ds, Missing), ds
    return ds


def _pixels(ds, i: int) -> np.ndarray:
    return np.asarray(ds.get_image(i).convert("RGB"))


def test_every_hub_copy_is_registered_for_a_registered_dataset() -> None:
    from starft_cli.data.registry import list_datasets

    assert set(hubsrc.HUB_COPIES) == set(COPIES) | {"caltech101-vtab"}
    assert set(hubsrc.HUB_COPIES) <= set(list_datasets())
    assert hubsrc.HUB_COPIES["imagenet-r"].splits["test"].samples == 30000
    assert hubsrc.HUB_COPIES["imagenet"].splits["val"].folder == "test"


@pytest.mark.parametrize("name", sorted(COPIES))
def test_hub_copy_reads_as_the_folder_layout(name: str, hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    split = COPIES[name]
    local = _local(name, split, tmp_path / "data")
    serve_dataset(hub, local, name, monkeypatch, split=split, per_shard=3)
    from_hub = hubsrc.download(name, split)
    assert from_hub.classnames == local.classnames
    assert from_hub.labels == local.labels
    assert from_hub.class_subset == local.class_subset
    assert from_hub.groups == local.groups
    assert from_hub.group_names == (None if local.group_names is None else list(local.group_names))
    assert from_hub.group_kind == local.group_kind
    assert from_hub.templates == local.templates
    assert len(from_hub) == len(local) > 0
    for i in range(len(local)):
        assert np.array_equal(_pixels(from_hub, i), _pixels(local, i)), i
    assert from_hub.source["repo"] == hubsrc.HUB_COPIES[name].repo
    assert len(from_hub.source["revision"]) == 40
    # later, with no data root: the cached copy is what resolve() finds
    again = resolve(name, None, split)
    assert again.labels == local.labels and again.split == split


def test_class_mapping_by_name_is_checked(tmp_path: Path) -> None:
    copy = hubsrc.HUB_COPIES["cifar10"]
    names, mapping = hubsrc.label_map(copy, ["truck", "Air_Plane".replace("_", "")])
    assert mapping == [9, 0] and names[9] == "truck"
    with pytest.raises(DataError, match="has a class 'spaceship' that the dataset's class list lacks"):
        hubsrc.label_map(copy, ["airplane", "spaceship"])
    subset = hubsrc.HUB_COPIES["imagenet-r"]
    with pytest.raises(DataError, match="has 3 classes, the published subset 200"):
        hubsrc.label_map(subset, ["a", "b", "c"])
    names, mapping = hubsrc.label_map(subset, [f"c{i}" for i in range(200)])
    assert len(names) == 1000 and mapping[:2] == [1, 2]  # goldfish, great white shark: ImageNet-R's first classes


def test_vtab_caltech101_is_its_own_dataset(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("caltech101", "test", tmp_path / "data")
    copy = hubsrc.HUB_COPIES["caltech101-vtab"]
    files = repo_files(local, copy, "test", per_shard=2)
    files["classnames.txt"] = b"background\nface\nleopard\n"  # VTAB's own list: not caltech101's
    splits = {**copy.splits, "test": dataclasses.replace(copy.splits["test"], samples=len(local))}
    monkeypatch.setitem(hubsrc.HUB_COPIES, "caltech101-vtab", dataclasses.replace(copy, splits=splits))
    hub.commit(copy.repo, files)
    missing = resolve("caltech101-vtab", None, "test")
    assert isinstance(missing, Missing) and "starft data download caltech101-vtab" in missing.problem
    ds = hubsrc.download("caltech101-vtab", "test")
    assert ds.classnames[:3] == ["background", "face", "leopard"] and ds.name == "caltech101-vtab"
    assert "caltech101" not in hubsrc.HUB_COPIES  # the original protocol has no Hub copy standing in for it
    with pytest.raises(DataError, match="has no Hub copy"):
        hubsrc.download("caltech101", "test")


def test_interrupted_shard_download_resumes(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from huggingface_hub import constants

    local = _local("imagenet-r", "test", tmp_path / "data")
    serve_dataset(hub, local, "imagenet-r", monkeypatch, per_shard=4)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # small pieces: a cut body keeps what arrived
    hub.drop["test/0.tar"] = 1  # the first GET sends half of the shard and hangs up
    ds = hubsrc.download("imagenet-r", "test")
    assert ds.labels == local.labels
    gets = hub.file_requests("test/0.tar", "GET")
    assert len(gets) == 2 and "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert start > 0  # resumed, not restarted


def test_checksum_mismatch_is_refused_and_nothing_kept(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("imagenet-r", "test", tmp_path / "data")
    serve_dataset(hub, local, "imagenet-r", monkeypatch, per_shard=4)
    hub.etags["test/0.tar"] = "0" * 64  # the Hub publishes a sha256 that the bytes it sends do not have
    with pytest.raises(hubsrc.DatasetChecksumError, match=r"checksum mismatch for test/0.tar .* the file was deleted"):
        hubsrc.download("imagenet-r", "test")
    assert hubsrc.cached_snapshot(hubsrc.HUB_COPIES["imagenet-r"], "test") is None
    blobs = list((tmp_path / "hf-cache").rglob("blobs/*"))
    assert all(
        b.stat().st_size
        != len(
            hub.repos[hubsrc.HUB_COPIES["imagenet-r"].repo].commits[
                hub.repos[hubsrc.HUB_COPIES["imagenet-r"].repo].refs["main"]
            ]["test/0.tar"]
        )
        for b in blobs
    )
    assert isinstance(resolve("imagenet-r", tmp_path / "empty", "test"), Missing)


def test_offline_without_and_with_cache(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("imagenet-v2", "test", tmp_path / "data")
    serve_dataset(hub, local, "imagenet-v2", monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hubsrc.DatasetUnavailableError) as info:
        hubsrc.download("imagenet-v2")
    line = info.value.one_line()
    assert "not in the local cache" in line and "HF_HUB_OFFLINE is set" in line
    assert str(tmp_path / "hf-cache") in line and "starft data download imagenet-v2" in line
    assert hub.requests == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hubsrc.download("imagenet-v2")
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = hubsrc.download("imagenet-v2")  # from the cache, no request
    assert ds.labels == local.labels


def test_unreachable_hub_fails_in_seconds_with_one_line(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    result = runner.invoke(app, ["data", "download", "imagenet-r"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "http://127.0.0.1:9 cannot be reached" in lines[0] and str(tmp_path / "cache") in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0]


def test_partial_copy_is_never_read_as_whole(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("imagenet-r", "test", tmp_path / "data")
    serve_dataset(hub, local, "imagenet-r", monkeypatch, per_shard=4)
    copy = hubsrc.HUB_COPIES["imagenet-r"]
    monkeypatch.setitem(
        hubsrc.HUB_COPIES, "imagenet-r", dataclasses.replace(copy, splits={"test": hubsrc.HubSplit("test", 30000)})
    )
    with pytest.raises(hubsrc.IncompleteDatasetError, match=f"holds {len(local)} samples, not the 30000 registered"):
        hubsrc.download("imagenet-r")
    missing = resolve("imagenet-r", tmp_path / "elsewhere", "test")
    assert isinstance(missing, Missing) and "not the 30000 registered" in missing.problem


def test_damaged_shard_is_named_with_the_fix(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("imagenet-r", "test", tmp_path / "data")
    files = repo_files(local, hubsrc.HUB_COPIES["imagenet-r"], per_shard=2)
    files["test/1.tar"] = files["test/1.tar"][:700]  # cut inside the first member
    serve = dataclasses.replace(hubsrc.HUB_COPIES["imagenet-r"], splits={"test": hubsrc.HubSplit("test", len(local))})
    monkeypatch.setitem(hubsrc.HUB_COPIES, "imagenet-r", serve)
    hub.commit(serve.repo, files)
    result = runner.invoke(app, ["data", "download", "imagenet-r"])
    assert result.exit_code == 1
    assert "shard " in result.stderr and "1.tar is damaged" in result.stderr
    assert "Fetch it again: `starft data download imagenet-r --split test --force`" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    hub.commit(serve.repo, repo_files(local, serve, per_shard=2))  # the Hub's copy repaired
    fixed = runner.invoke(app, ["data", "download", "imagenet-r", "--split", "test", "--force"])
    assert fixed.exit_code == 0, fixed.output
    assert f"imagenet-r (test): {len(local)} samples, 2 shard(s)" in fixed.stdout


def test_wds_data_with_groups_and_captions(tmp_path: Path, monkeypatch) -> None:
    from starft_cli.data.shards import load_shards

    local = _local("waterbirds", "test", tmp_path / "data")
    import io

    import webdataset as wds

    folder = tmp_path / "shards" / "test"
    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "000.tar")) as sink:
        for i in range(len(local)):
            buffer = io.BytesIO()
            local.get_image(i).save(buffer, format="PNG")
            sink.write(
                {
                    "__key__": f"k{i:04d}",
                    "png": buffer.getvalue(),
                    "cls": str(local.labels[i]).encode(),
                    "group": str(local.groups[i]).encode(),
                    "txt": f"caption {i}".encode(),
                }
            )
    (tmp_path / "shards" / "classnames.txt").write_text("\n".join(local.classnames) + "\n")
    (tmp_path / "shards" / "groupnames.txt").write_text("\n".join(local.group_names) + "\n")
    ds = load_shards(str(folder / "{000..000}.tar"))
    assert ds.labels == local.labels and ds.groups == local.groups and ds.group_names == list(local.group_names)
    assert ds.captions == [f"caption {i}" for i in range(len(local))]
    assert np.array_equal(_pixels(ds, 3), _pixels(local, 3))
    same = resolve(f"wds:{folder}")
    assert same.labels == local.labels and same.split == "test"
    with pytest.raises(DataError, match="do not exist"):
        resolve(f"wds:{folder}/{{000..001}}.tar")
    # starft eval on the shards, with DataLoader workers that read the shards themselves (the index cached, no image
    # in memory; several batches, so that the second worker has some) and the group metric
    from starft_cli.data.shards import _CACHE, build_index, expand_shards

    monkeypatch.setenv("STARFT_HOME", str(tmp_path / "home"))
    build_index(expand_shards(str(folder)))
    _CACHE.items.clear()
    args = ["eval", "-m", "starft-tiny:none", "--data", f"wds:{folder}", "--metric", "top1", "--metric"]
    args += ["worst_group_acc", "--workers", "2", "--batch-size", "2", "--no-cache"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    assert {r["metric"] for r in rows} >= {"top1", "worst_group_acc"}
    assert all(r["num_samples"] == len(local) and r["num_skipped"] == 0 for r in rows)
    (tmp_path / "shards" / "classnames.txt").unlink()
    with pytest.raises(DataError, match="has no class names"):
        load_shards(str(folder))


def test_unknown_dataset_lists_those_with_a_copy() -> None:
    result = runner.invoke(app, ["data", "download", "imagenet-rr"])
    assert result.exit_code == 1
    assert "unknown dataset 'imagenet-rr'" in result.stderr and "imagenet-r" in result.stderr
    with pytest.raises(SplitError, match="has no split 'train'"):
        hubsrc.hub_split(hubsrc.HUB_COPIES["imagenet-r"], "train")


def test_eval_suite_all_download_end_to_end(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    import json

    names = ("cifar10", "fmow")
    for name in names:
        serve_dataset(hub, _local(name, "test", tmp_path / "data"), name, monkeypatch, per_shard=5)
    monkeypatch.setenv("STARFT_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    args = ["eval", "-m", "starft-tiny:none", "--suite", "all", "--download", "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    seen = {r["dataset"] for r in records}
    assert set(names) <= seen
    for record in records:
        if record["dataset"] in names:
            assert record["source"].startswith(hubsrc.HUB_COPIES[record["dataset"]].repo + "@")
    assert any(r["metric"] == "worst_region_acc" for r in records if r["dataset"] == "fmow")
    # the datasets that have no copy on this Hub were reported missing, not evaluated
    assert "not present" in result.stderr


def test_write_shards_round_trip(tmp_path: Path) -> None:
    from starft_cli.data.shards import build_index

    local = _local("imagenet-v2", "test", tmp_path / "data")
    shards = write_shards(local, tmp_path / "s", list(range(1000)), per_shard=4)
    index = build_index(shards, use_cache=False)
    assert index.labels == local.labels and len(shards) == 2 and index.shard_of == [0, 0, 0, 0, 1, 1]


def test_finetune_download_trains_on_the_hub_copy(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("caltech101", "train", tmp_path / "data")
    copy = hubsrc.HUB_COPIES["caltech101-vtab"]
    files = repo_files(local, copy, "train", per_shard=3)
    splits = {**copy.splits, "train": dataclasses.replace(copy.splits["train"], samples=len(local))}
    monkeypatch.setitem(hubsrc.HUB_COPIES, "caltech101-vtab", dataclasses.replace(copy, splits=splits))
    hub.commit(copy.repo, files)
    monkeypatch.setenv("STARFT_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    args = ["finetune", "--backbone", "starft-tiny:none", "--workers", "0", "--device", "cpu", "--method", "ft"]
    args += ["--data", "caltech101-vtab", "--download", "--epochs", "1", "--batch-size", "4", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fetching caltech101-vtab (train) from clip-benchmark/wds_vtab-caltech101@" in result.stderr
    assert (run / "config.json").is_file()


def test_wds_data_from_a_hub_dataset_repo(hub: HubServer, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _local("stl10", "test", tmp_path / "data")
    files = repo_files(local, hubsrc.HUB_COPIES["stl10"], per_shard=4)
    commit = hub.commit("someone/wds_mydata", files)
    ds = resolve("wds:hf-hub:someone/wds_mydata/test")
    assert ds.labels == [len(local.classnames) - 1 - y for y in local.labels]  # the repo's own (reversed) classes
    assert ds.classnames[0] == local.classnames[-1]
    assert ds.source == {"kind": "hub", "repo": "someone/wds_mydata", "revision": commit, "split": "test"}
    assert ds.templates.endswith("zeroshot_classification_templates.txt")
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(f"wds:hf-hub:someone/wds_mydata@{commit}/test").labels == ds.labels  # from the cache
    with pytest.raises(hubsrc.DatasetUnavailableError, match="not in the local cache") as info:
        resolve("wds:hf-hub:someone/other/test")
    assert "run the command with --data wds:hf-hub:someone/other/test" in info.value.one_line()
    with pytest.raises(DataError, match="is not a Hub dataset reference"):
        resolve("wds:hf-hub:nosplit")
