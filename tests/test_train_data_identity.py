"""A resume on other data is refused naming what changed (issue 19 item 5, issue 20 item 2); --resume of a run
that does not exist says it starts a new one (issue 20 item 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders, make_image

runner = CliRunner()


def _finetune(data: Path, run: Path, *extra: str):
    args = ["finetune", "--backbone", "starft-tiny:none", "--workers", "0", "--device", "cpu", "--warmup", "1"]
    args += ["--data", f"folder:{data}", "--batch-size", "4", "--epochs", "1", "--out", str(run), *extra]
    return runner.invoke(app, args)


def test_a_finished_ft_run_resumed_after_a_class_was_added_is_refused(tmp_path: Path):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "run"
    assert _finetune(data, run, "--method", "ft").exit_code == 0
    identity = json.loads((run / "data.json").read_text())
    assert (identity["classes"], identity["samples"], identity["counts"]) == (["car", "cat", "dog"], 12, [4, 4, 4])
    make_class_folders(tmp_path / "data", ["bus"], per_class=4)  # a fourth class between two runs of --resume
    result = _finetune(data, run, "--method", "ft", "--resume")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        f"error: {run} was trained on other data than folder:{data} holds now: class 'bus' was added. Resume on "
        "the data the run started on, or start a new run with another --out"
    )
    assert "Traceback" not in result.output


def test_a_resume_names_a_class_with_more_or_other_images(tmp_path: Path):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "run"
    assert _finetune(data, run, "--max-steps", "1").exit_code == 0
    extra = make_image(data / "dog" / "extra.png", seed=99, color=(1, 2, 3))
    result = _finetune(data, run, "--max-steps", "1", "--resume")
    assert result.exit_code == 1
    assert "was trained on other data" in result.stderr and "class 'dog' had 4 images, now 5" in result.stderr
    extra.unlink()
    first = sorted((data / "cat").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0" * 7)  # same name, other size
    result = _finetune(data, run, "--max-steps", "1", "--resume")
    assert result.exit_code == 1 and "class 'cat' has other files (or sizes) than it had" in result.stderr


def test_the_same_data_elsewhere_resumes(tmp_path: Path):
    """The identity holds paths relative to the data's folder and sizes, not modification times: data copied to
    another place (or touched) resumes."""
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "run"
    assert _finetune(data, run, "--max-steps", "1", "--epochs", "2").exit_code == 0
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # new modification times
    config = json.loads((run / "config.json").read_text())
    config["data"] = f"folder:{moved}"  # (the stored --data, as after moving the data and editing it)
    (run / "config.json").write_text(json.dumps(config))
    result = _finetune(moved, run, "--max-steps", "1", "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "already finished" in result.stderr  # past the data check (which a changed class fails, as above)


def test_resume_of_a_run_that_does_not_exist_starts_a_new_one_and_says_so(tmp_path: Path):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "nothing-here"
    result = _finetune(data, run, "--max-steps", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"no run at {run}: starting a new one"
    assert (run / "config.json").is_file() and (run / "data.json").is_file()
    again = _finetune(data, run, "--max-steps", "1", "--resume")  # now there is one: it is finished
    assert again.exit_code == 0 and "no run at" not in again.stderr and "already finished" in again.stderr


def test_the_identity_of_many_files_is_the_same_when_stat_ed_by_threads(tmp_path: Path):
    """5,000 files (stat-ed by a thread pool) and a subset of them (one by one) agree class by class."""
    import types

    from starft_cli.train.dataid import data_identity, identity_changes

    paths, labels = [], []
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(2500):
            path = tmp_path / f"c{c}" / f"{i}.jpg"
            path.write_bytes(b"x" * (i % 7))
            paths.append(path)
            labels.append(c)
    many = types.SimpleNamespace(classnames=["a", "b"], labels=labels, paths=paths, captions=None)
    whole = data_identity(many)
    assert whole["counts"] == [2500, 2500] and whole["samples"] == 5000
    assert identity_changes(whole, data_identity(many)) == []
    paths[3].write_bytes(b"longer than before")
    assert identity_changes(whole, data_identity(many)) == ["class 'a' has other files (or sizes) than it had"]
    from starft_cli.train.dataid import _size, _sizes

    names = [str(p) for p in paths] + [str(tmp_path / "gone.jpg")]
    assert _sizes(names) == [_size(n) for n in names]  # the pool keeps the order; a missing file is "missing"
    assert _sizes(names)[3] == 18 and _sizes(names)[-1] == "missing"
