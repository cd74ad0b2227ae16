"""CLI fuzz table: bad invocations of every command each exit non-zero with ONE line on stderr (usage errors
included), no traceback, and leave nothing behind in the working folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from tests.imagegen import make_class_folders, make_image

T = ["--backbone", "starft-tiny:none"]  # finetune
M = ["-m", "starft-tiny:none", "--device", "cpu"]  # classify, eval
W = ["wise", "--zero-shot", "starft-tiny:none", "--out", "{out}", "--fine-tuned"]
ZA = ["zoo", "add", "mine"]
C = ["classify", "{img}", "--labels", "a,b"]
FT = ["finetune", *T, "--device", "cpu", "--data", "folder:{data}", "--epochs", "1", "--batch-size", "2"]

# (id, arguments with {placeholders}, expected exit code, a piece of the message)
CASES: list[tuple[str, list[str], int, str]] = [
    # -- the root
    ("unknown-command", ["nosuch"], 2, "No such command"),
    ("unknown-root-flag", ["--nosuch"], 2, "No such option"),
    # -- classify
    ("classify-no-images", ["classify"], 2, "Missing argument"),
    ("classify-no-labels", ["classify", "{img}", *M], 2, "label"),
    ("classify-empty-labels", ["classify", "{img}", "--labels", "", *M], 2, "--labels is empty"),
    ("classify-top-k-zero", ["classify", "{img}", "--labels", "a,b", "--top-k", "0", *M], 2, "--top-k"),
    ("classify-top-k-type", ["classify", "{img}", "--labels", "a,b", "--top-k", "two", *M], 2, "--top-k"),
    ("classify-bad-format", ["classify", "{img}", "--labels", "a,b", "--format", "xml", *M], 2, "--format"),
    ("classify-batch-negative", ["classify", "{img}", "--labels", "a,b", "--batch-size", "-1", *M], 2, "--batch-size"),
    ("classify-missing-image", ["classify", "{missing}", "--labels", "a,b", *M], 1, "no such file"),
    ("classify-unicode-space-path", ["classify", "{uni}", "--labels", "a,b", *M], 1, "ünï cödé"),
    ("classify-not-an-image", ["classify", "{text}", "--labels", "a,b", *M], 1, "not an image"),
    ("classify-labels-and-file", ["classify", "{img}", "--labels", "a,b", "--labels-file", "{text}", *M], 2, "labels"),
    ("classify-labels-file-is-dir", ["classify", "{img}", "--labels-file", "{dir}", *M], 2, "labels file"),
    ("classify-unknown-model", ["classify", "{img}", "--labels", "a,b", "-m", "no-such-model:none"], 1, "no-such"),
    ("classify-empty-model", [*C, "-m", "", "--device", "cpu"], 2, "-m is empty"),
    ("classify-unknown-templates", ["classify", "{img}", "--labels", "a,b", "--templates", "nosuch", *M], 1, "nosuch"),
    ("classify-bad-device", [*C, "-m", "starft-tiny:none", "--device", "tpu"], 2, "tpu"),
    # -- finetune
    ("finetune-epochs-type", ["finetune", "--epochs", "abc"], 2, "--epochs"),
    ("finetune-epochs-zero", [*FT, "--epochs", "0", "--out", "{out}"], 2, "epochs"),
    ("finetune-lr-negative", [*FT, "--lr", "-1", "--out", "{out}"], 2, "lr"),
    ("finetune-batch-zero", [*FT, "--batch-size", "0", "--out", "{out}"], 2, "batch"),
    ("finetune-lambda-with-reg-none", [*FT, "--method", "flyp", "--lambda", "0.5", "--out", "{out}"], 2, "--lambda"),
    ("finetune-select-by-without-val", [*FT, "--select-by", "top1", "--out", "{out}"], 2, "--val-data"),
    ("finetune-resume-without-out", ["finetune", "--resume"], 2, "--out"),
    ("finetune-resume-not-a-run", [*FT, "--resume", "--out", "{dirfull}"], 1, "not a starft run"),
    ("finetune-missing-data", ["finetune", *T, "--data", "folder:{missing}", "--out", "{out}"], 1, "no such folder"),
    ("finetune-unknown-data", ["finetune", *T, "--data", "nosuchdata", "--out", "{out}"], 1, "nosuchdata"),
    ("finetune-empty-data", ["finetune", *T, "--data", "", "--out", "{out}"], 2, "--data is empty"),
    ("finetune-empty-backbone", ["finetune", "--backbone", "", "--data", "folder:{data}"], 2, "--backbone is empty"),
    ("finetune-out-is-a-file", [*FT, "--out", "{text}"], 1, ""),
    ("finetune-out-unwritable", [*FT, "--out", "{text}/run"], 1, "not a directory"),
    ("finetune-bad-precision", [*FT, "--precision", "fp8", "--out", "{out}"], 2, "fp8"),
    ("finetune-missing-config", [*FT, "--config", "{missing}.toml", "--out", "{out}"], 2, "toml"),
    ("finetune-unicode-space-data", ["finetune", *T, "--data", "folder:{uni}", "--out", "{out}"], 1, "ünï cödé"),
    # -- wise
    ("wise-no-zero-shot", ["wise"], 2, "--zero-shot"),
    ("wise-missing-fine-tuned", [*W, "{missing}"], 1, "missing"),
    ("wise-alpha-out-of-range", [*W, "{dir}", "--alpha", "1.5"], 2, "alpha"),
    ("wise-alpha-type", [*W, "{dir}", "--alpha", "abc"], 2, "alpha"),
    # -- eval
    ("eval-unknown-suite", ["eval", *M, "--suite", "nosuch"], 2, "nosuch"),
    ("eval-missing-data", ["eval", *M, "--data", "folder:{missing}", "--out", "{out}"], 1, "no such folder"),
    ("eval-suite-and-data", ["eval", *M, "--suite", "domain-shift", "--data", "folder:{data}"], 2, "--suite"),
    ("eval-batch-zero", ["eval", *M, "--data", "folder:{data}", "--batch-size", "0"], 2, "--batch-size"),
    ("eval-bad-format", ["eval", *M, "--data", "folder:{data}", "--format", "xml"], 2, "xml"),
    ("eval-unknown-metric", ["eval", *M, "--data", "folder:{data}", "--metric", "nosuch"], 2, "nosuch"),
    ("eval-out-unwritable", ["eval", *M, "--data", "folder:{data}", "--out", "{text}/ev"], 1, "not a directory"),
    # -- report
    ("report-missing-file", ["report", "{missing}"], 1, "missing"),
    ("report-dir-without-results", ["report", "{dir}"], 1, ""),
    ("report-not-json", ["report", "{text}"], 1, ""),
    ("report-bad-format", ["report", "{results}", "--format", "xml"], 2, "xml"),
    ("report-out-exists", ["report", "{results}", "--out", "{text}"], 2, "--force"),
    ("report-out-unwritable", ["report", "{results}", "--out", "{text}/r.md"], 1, "notes.txt"),
    # -- demo
    ("demo-unknown-method", ["demo", "--methods", "nosuch", "--out", "{out}"], 2, "nosuch"),
    ("demo-seed-type", ["demo", "--seed", "abc"], 2, "--seed"),
    # -- data
    ("data-check-unknown", ["data", "check", "nosuchdata"], 1, "nosuchdata"),
    ("data-check-missing-folder", ["data", "check", "folder:{missing}"], 1, "not laid out right"),
    ("data-check-file-as-folder", ["data", "check", "folder:{text}"], 1, ""),
    ("data-download-unknown", ["data", "download", "nosuchdata"], 1, "nosuchdata"),
    ("data-list-extra-arg", ["data", "list", "extra"], 2, "extra"),
    # -- zoo
    ("zoo-info-unknown", ["zoo", "info", "nosuch-model"], 1, "nosuch-model"),
    ("zoo-download-unknown", ["zoo", "download", "nosuch-model"], 1, "nosuch-model"),
    ("zoo-path-unknown", ["zoo", "path", "nosuch-model"], 1, "nosuch-model"),
    ("zoo-rm-unknown", ["zoo", "rm", "nosuch-model"], 1, "nosuch-model"),
    ("zoo-add-http", [*ZA, "--source", "http://x.org/w.bin", "--arch", "ViT-B-16", "--sha256", "0" * 64], 1, "https"),
    ("zoo-add-bad-kind", ["zoo", "add", "mine", "--kind", "nosuch"], 2, "--kind"),
    # -- cache
    ("cache-clear-bad-kind", ["cache", "clear", "--kind", "nosuch"], 2, "--kind"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    make_class_folders(root / "data", ["cat", "dog"], per_class=2)
    make_image(root / "img.jpg", seed=1)
    (root / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (root / "emptydir").mkdir()
    (root / "somefolder").mkdir()
    (root / "somefolder" / "x.txt").write_text("x", encoding="utf-8")
    (root / "uni dir").mkdir()
    record = {"model": "m", "dataset": "d", "metric": "top1", "value": 0.5}
    (root / "results.json").write_text(json.dumps([record]), encoding="utf-8")
    return root


def _fill(arg: str, root: Path) -> str:
    return arg.format(
        data=root / "data",
        img=root / "img.jpg",
        text=root / "notes.txt",
        dir=root / "emptydir",
        dirfull=root / "somefolder",
        missing=root / "missing",
        uni=root / "uni dir" / "ünï cödé.jpg",
        out=root / "out",
        results=root / "results.json",
    )


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("args", "code", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_one_line_nonzero_nothing_left(
    args: list[str], code: int, needle: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("STARFT_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _listing(workdir)
    result = CliRunner().invoke(app, [_fill(a, workdir) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    stderr = result.stderr
    lines = [line for line in stderr.splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "error: unexpected" not in stderr, stderr
    assert needle.lower() in lines[0].lower(), stderr
    assert result.exit_code == code, stderr
    assert _listing(workdir) == before  # no partial output left behind
    assert not os.path.exists(workdir / "out")


def test_the_table_covers_every_command_and_forty_cases() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] if c[1][0] not in ("data", "zoo", "cache") else " ".join(c[1][:2]) for c in CASES}
    for name in ("classify", "finetune", "wise", "eval", "report", "demo", "data check", "zoo info", "cache clear"):
        assert name in commands, name
