"""The shipped manifest travels inside the wheel, and an installed wheel's ``starft zoo list`` reads it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_wheel_ships_the_manifest_and_installed_cli_reads_it(tmp_path: Path) -> None:
    # Build from a copy, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("starft_cli", "zoo"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("starft-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = archive.read("starft_cli/zoo/_shipped/manifest.toml")
    assert shipped == (ROOT / "zoo" / "manifest.toml").read_bytes()
    assert not [n for n in names if n.startswith("zoo/")]  # nothing installed outside the package
    # the protocols' data files (class names and templates per dataset) ship too
    assert {
        "starft_cli/data/protocols/reference/iwildcam.json",
        "starft_cli/data/protocols/clip-benchmark/cifar100.json",
    } <= set(names)

    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    run_dir = tmp_path / "elsewhere"  # not the checkout: the installed copy must be the one imported
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "STARFT_HOME": str(tmp_path / "home")}
    env.pop("STARFT_ZOO", None)
    done = subprocess.run(
        [sys.executable, "-m", "starft_cli", "zoo", "list", "--format", "json"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert {e["name"] for e in entries} == {
        "starft-demo-zero-shot",
        "vit-b-16-laion400m-e31",
        "vit-b-16-laion400m-e32",
        "vit-l-14-laion400m-e31",
        "vit-l-14-laion400m-e32",
    }
    manifests = {Path(e["manifest"]).resolve() for e in entries}
    assert manifests == {(site / "starft_cli" / "zoo" / "_shipped" / "manifest.toml").resolve()}
