"""An unreadable training image part-way into a run is replaced and counted, not fatal; --strict stops at it
(issue 20 item 12)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders

runner = CliRunner()


def _finetune(data: Path, run: Path, *extra: str):
    args = ["finetune", "--backbone", "starft-tiny:none", "--device", "cpu", "--warmup", "1", "--method", "flyp"]
    args += ["--data", f"folder:{data}", "--batch-size", "4", "--epochs", "2", "--out", str(run), *extra]
    return runner.invoke(app, args)


def test_an_unreadable_image_is_replaced_warned_once_and_counted(tmp_path: Path):
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    bad = sorted((data / "dog").iterdir())[1]
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    for workers in ("0", "2"):
        run = tmp_path / f"run-{workers}"
        result = _finetune(data, run, "--workers", workers)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and str(bad) in line]
        assert len(warnings) == 1, result.stderr  # two epochs, one warning
        assert warnings[0].endswith("; the next readable image takes its place (--strict stops instead)")
        summary = result.stderr.strip().splitlines()[-1]
        assert summary.startswith("finished 6 of 6 steps") and "1 unreadable image(s) replaced" in summary
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5, 6]
    strict = _finetune(data, tmp_path / "strict", "--workers", "0", "--strict")
    assert strict.exit_code == 1
    (error,) = [line for line in strict.stderr.splitlines() if line.startswith("error:")]
    assert str(bad) in error and "Traceback" not in strict.output


def test_the_replacement_is_the_next_readable_sample_with_its_own_label():
    import pytest
    import torch

    from starft_cli.errors import DataError, ImageError
    from starft_cli.train.unreadable import SkipUnreadable

    class Samples(torch.utils.data.Dataset):
        epoch = 0

        def __init__(self, bad):
            self.bad = bad

        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i in self.bad:
                raise ImageError(f"cannot read img{i}.jpg")
            return torch.full((1,), float(i)), 10 + i, i

    skip = SkipUnreadable(Samples({1, 2}))
    image, label, index, problem = skip[1]
    assert (float(image), label, index, problem) == (3.0, 13, 3, "cannot read img1.jpg")
    assert skip[3][1:] == (13, 3, "")
    assert skip[0][1:] == (10, 0, "")
    with pytest.raises(ImageError, match=r"img2\.jpg"):
        SkipUnreadable(Samples({2}), strict=True)[2]
    with pytest.raises(DataError, match="no image of the training data can be read"):
        SkipUnreadable(Samples({0, 1, 2, 3}))[0]
