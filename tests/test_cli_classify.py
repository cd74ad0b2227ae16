from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.models import WEIGHTS_NAME, save_checkpoint
from tests.imagegen import make_image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "starft-tiny:none", "--device", "cpu"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_table_lists_every_label_best_first(runner: CliRunner, images: list[Path]) -> None:
    result = invoke(runner, "classify", *map(str, images), "--labels", "cat,dog,car", *TINY)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "rank", "label", "probability"]
    body = [line for line in lines[2:]]
    assert len(body) == 3 * 3
    probs = [float(line.split()[-1]) for line in body]
    for i in range(3):
        chunk = probs[3 * i : 3 * i + 3]
        assert chunk == sorted(chunk, reverse=True)
        assert sum(chunk) == pytest.approx(1.0, abs=2e-4)


def test_json_is_strict_and_sums_to_one(runner: CliRunner, images: list[Path]) -> None:
    result = invoke(runner, "classify", str(images[0].parent), "--labels", "cat,dog,car", "--format", "json", *TINY)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert [Path(d["image"]).name for d in data] == ["0.jpg", "1.jpg", "2.jpg"]
    for item in data:
        probs = [p["probability"] for p in item["predictions"]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs == sorted(probs, reverse=True)
        assert {p["label"] for p in item["predictions"]} == {"cat", "dog", "car"}


def test_top_k_and_csv(runner: CliRunner, images: list[Path], tmp_path: Path) -> None:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\ndog\n\ncar\n")
    pattern = str(images[0].parent / "*.jpg")
    result = invoke(
        runner, "classify", pattern, "--labels-file", str(labels_file), "--top-k", "2", "--format", "csv", *TINY
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3 * 2
    assert [r["rank"] for r in rows[:2]] == ["1", "2"]


def test_templates_change_the_head(runner: CliRunner, images: list[Path], tmp_path: Path) -> None:
    custom = tmp_path / "t.txt"
    custom.write_text("a sketch of {c}.\n")
    outs = []
    for templates in ("single", str(custom)):
        result = invoke(
            runner, "classify", str(images[0]), "-l", "cat,dog", "--templates", templates, "--format", "json", *TINY
        )
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.stdout)[0]["predictions"][0]["probability"])
    assert outs[0] != outs[1]


def _corrupt(tmp_path: Path) -> Path:
    good = make_image(tmp_path / "good.jpg", seed=1, size=(64, 64))
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    return bad


@pytest.mark.parametrize(
    ("case", "exit_code", "needle"),
    [
        ("missing", 1, "no such file or directory"),
        ("empty_dir", 1, "holds no images"),
        ("truncated", 1, "corrupt or truncated"),
        ("not_image", 1, "fake.jpg is damaged: its content is not a readable JPG image. Re-create or remove"),
        ("text_file", 1, "notes.txt is not an image. Pass JPEG, PNG"),
        ("empty_label", 2, "empty label"),
        ("duplicate_label", 2, "duplicate labels: cat"),
        ("both_label_flags", 2, "exactly one of --labels and --labels-file"),
        ("unknown_model", 1, "unknown model 'ViT-B-61'"),
        ("wrong_arch", 1, "do not fit starft-tiny; the file looks like starft-small"),
        ("bad_device", 2, "unknown device"),
        ("bad_template", 1, "exactly one slot"),
    ],
)
def test_errors_are_one_line(
    runner: CliRunner, tmp_path: Path, images: list[Path], case: str, exit_code: int, needle: str
) -> None:
    image = str(images[0])
    labels = ["--labels", "cat,dog"]
    model = TINY
    args: list[str]
    if case == "missing":
        args = [str(tmp_path / "nope.jpg"), *labels]
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("x")
        args = [str(tmp_path / "empty"), *labels]
    elif case == "truncated":
        args = [str(_corrupt(tmp_path)), *labels]
    elif case == "not_image":
        text = tmp_path / "fake.jpg"
        text.write_text("hello, not a jpeg")
        args = [str(text), *labels]
    elif case == "text_file":
        text = tmp_path / "notes.txt"
        text.write_text("hello")
        args = [str(text), *labels]
    elif case == "empty_label":
        args = [image, "--labels", "cat,,dog"]
    elif case == "duplicate_label":
        args = [image, "--labels", "cat,dog,cat"]
    elif case == "both_label_flags":
        args = [image, "--labels", "a,b", "--labels-file", str(tmp_path / "x")]
    elif case == "unknown_model":
        args, model = [image, *labels], ["--model", "ViT-B-61"]
    elif case == "wrong_arch":
        from starft_cli.models import load

        small = load("starft-small:none")
        save_checkpoint(small.model, tmp_path / "small", small.model_cfg, small.preprocess_cfg)
        (tmp_path / "small" / "open_clip_config.json").unlink()  # bare weights (a sidecar + --arch is another error)
        args, model = [image, *labels], ["--model", str(tmp_path / "small" / WEIGHTS_NAME), "--arch", "starft-tiny"]
    elif case == "bad_device":
        args, model = [image, *labels], ["--model", "starft-tiny:none", "--device", "tpu"]
    else:
        bad = tmp_path / "bad.txt"
        bad.write_text("a photo of {} and {}.\n")
        args = [image, *labels, "--templates", str(bad)]
    result = runner.invoke(app, ["classify", *args, *model])
    assert result.exit_code == exit_code, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    assert needle in err[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "STARFT_DEBUG": "1", "PYTHONPATH": str(REPO), "STARFT_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "starft_cli", "classify", str(tmp_path / "nope.jpg"), "--labels", "a,b"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ImageError" in done.stderr


def test_every_help_works_and_none_imports_torch() -> None:
    # regression: sub-command --help once exited 1 (typer's own Exit was taken for an unexpected error)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from starft_cli.cli.app import app\n"
        "r = CliRunner()\n"
        "cmds = [[], ['classify'], ['finetune'], ['wise'], ['eval'], ['report'], ['data'], ['data', 'check'],\n"
        "        ['zoo'], ['zoo', 'list'], ['zoo', 'publish']]\n"
        "for args in [c + ['--help'] for c in cmds] + [['--version']]:\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, res.output\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'pandas', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "starft_cli", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0
    from starft_cli import __version__

    assert done.stdout.strip() == f"starft {__version__}"


def test_core_warnings_reach_stderr_as_one_line(runner: CliRunner, images: list[Path], tmp_path: Path) -> None:
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {}.\na photo of a {}.\n")
    result = runner.invoke(app, ["classify", str(images[0]), "-l", "a,b", "--templates", str(templates), *TINY])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "duplicate template" in result.stderr


def test_public_api_names_resolve() -> None:
    import starft_cli

    for name in starft_cli.__all__:
        assert getattr(starft_cli, name) is not None, name
    with pytest.raises(AttributeError):
        starft_cli.no_such_name


def test_a_corrupt_file_in_a_folder_is_skipped_and_counted(runner: CliRunner, images: list[Path]) -> None:
    """Two good images and a damaged one: results for the two, a warning naming the third, exit 0; --strict: 1."""
    folder = images[0].parent
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = runner.invoke(app, ["classify", str(folder), "--labels", "cat,dog", "--format", "json", *TINY])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sorted(Path(d["image"]).name for d in data) == ["0.jpg", "1.jpg", "2.jpg"]
    (folder / "2.jpg").unlink()
    result = runner.invoke(app, ["classify", str(folder), "--labels", "cat,dog", "--format", "json", *TINY])
    assert result.exit_code == 0, result.output
    assert [Path(d["image"]).name for d in json.loads(result.stdout)] == ["0.jpg", "1.jpg"]
    assert "warning: skipping unreadable image:" in result.stderr and "broken.jpg is damaged" in result.stderr
    assert "warning: 1 of 3 image(s) skipped" in result.stderr
    strict = runner.invoke(app, ["classify", str(folder), "--labels", "cat,dog", "--strict", *TINY])
    assert strict.exit_code == 1
    assert "broken.jpg is damaged" in strict.stderr and "without --strict" in strict.stderr
    assert strict.stdout == ""


def test_classify_applies_the_exif_orientation(runner: CliRunner, tmp_path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view) classifies as the
    upright image does; datasets (training, eval) ignore EXIF, as the benchmark pipelines do."""
    import numpy as np
    from PIL import Image

    from starft_cli.images import open_image

    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[:, :20] = (250, 0, 0)  # a red band on the left
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    stored.save(tmp_path / "sideways.png", exif=exif.tobytes())
    assert np.array_equal(np.asarray(open_image(tmp_path / "sideways.png", exif_transpose=True)), upright)
    assert np.asarray(open_image(tmp_path / "sideways.png")).shape == (60, 40, 3)  # datasets: as stored
    args = ["--labels", "red,blue", "--format", "json", *TINY]
    a = json.loads(runner.invoke(app, ["classify", str(tmp_path / "upright.png"), *args]).stdout)
    b = json.loads(runner.invoke(app, ["classify", str(tmp_path / "sideways.png"), *args]).stdout)
    assert a[0]["predictions"] == b[0]["predictions"]


def test_table_prints_every_probability_with_four_decimals() -> None:
    from starft_cli.cli.classify import OutputFormat, render

    results = [
        {
            "image": "a.png",
            "predictions": [{"label": "cat", "probability": 1.0}, {"label": "dog", "probability": 0.01}],
        },
        {"image": "b.png", "predictions": [{"label": "dog", "probability": 0.5}, {"label": "cat", "probability": 0.5}]},
    ]
    lines = render(results, OutputFormat.table).splitlines()
    assert [line.split()[-1] for line in lines[2:]] == ["1.0000", "0.0100", "0.5000", "0.5000"]
    assert len({len(line) for line in lines[2:]}) == 1  # right-aligned: one width
