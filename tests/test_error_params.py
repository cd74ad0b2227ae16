"""Core errors speak of arguments (`` `top_k` ``), which Python callers see; the CLI shows the flag (``--top-k``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import starft_cli
from starft_cli.cli.app import app
from starft_cli.cli.flags import FLAGS, error_line, flag_for, with_flags
from starft_cli.errors import StarftError, UsageError

runner = CliRunner()
PACKAGE = Path(starft_cli.__file__).parent
# train/config.py validates TrainConfig, whose settings are named as the flags and TOML keys that set them
NOT_CORE = {"train/config.py"}
FLAG_RE = re.compile(r"(?<![\w`-])--[a-z][a-z0-9-]+")


def _core_modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] != "cli" and p.relative_to(PACKAGE).as_posix() not in NOT_CORE
    ]


def _cli_options() -> set[str]:
    import typer

    options: set[str] = set()

    def walk(command) -> None:
        for param in command.params:
            options.update(o for o in param.opts if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return options


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """The string literals in ``tree``; an f-string as one text (its fields as ``X``)."""
    parts: set[int] = set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            out.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            out.append((node.lineno, node.value))
    return out


def test_classify_names_the_argument_for_python_callers(images: list[Path], tiny) -> None:
    from starft_cli.zeroshot import classify

    with pytest.raises(UsageError) as raised:
        classify(images[:1], ["cat", "dog"], model=tiny, top_k=0)
    assert raised.value.one_line() == "`top_k` must be at least 1 (got 0)"
    assert raised.value.params == ("top_k",)
    assert error_line(raised.value) == "--top-k must be at least 1 (got 0)"


def test_rendering_replaces_only_the_named_arguments() -> None:
    exc = StarftError("`out` and `lr` are wrong", "Choose another `out`", param="out")
    assert exc.one_line() == "`out` and `lr` are wrong. Choose another `out`"
    assert exc.one_line(flag_for) == "--out and `lr` are wrong. Choose another --out"
    assert flag_for("runs") == "--run" and flag_for("some_new_arg") == "--some-new-arg"
    assert with_flags("Pass `classnames_file`, or put x beside it") == "Pass --classnames FILE, or put x beside it"


def test_cli_shows_the_flag(tmp_path: Path) -> None:
    args = ["soup", "--run", "starft-tiny:none", "--method", "uniform", "--pretrained", "starft-tiny:none"]
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert done.exit_code == 2
    assert done.stderr == "error: --pretrained is for model-stock, not uniform. Drop it\n"


def test_cli_classify_with_one_label_names_the_label_flags(images: list[Path]) -> None:
    done = runner.invoke(app, ["classify", str(images[0]), "--labels", "cat", "--model", "starft-tiny:none"])
    assert done.exit_code == 2
    assert done.stderr == (
        "error: classification needs at least two labels. Give two or more class names in --labels (or --labels-file)\n"
    )


def test_every_argument_a_core_error_names_has_a_real_flag() -> None:
    named: set[str] = set()
    for path in _core_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "param":
                        named.update(
                            c.value for c in ast.walk(keyword.value) if isinstance(c, ast.Constant) and c.value
                        )
    assert "top_k" in named and "out" in named
    assert named <= set(FLAGS), sorted(named - set(FLAGS))
    options = _cli_options()
    for name, flag in FLAGS.items():
        assert set(FLAG_RE.findall(flag)) <= options, (name, flag)


def test_no_core_error_names_a_cli_flag() -> None:
    """Messages and hints of errors raised outside cli/ name arguments, not flags (a suggested `starft ...` or
    `torchrun ...` command line may carry its flags)."""
    options = _cli_options()
    found = []
    for path in _core_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for line, text in _strings(node.exc):
                text = re.sub(r"`(starft|torchrun) [^`]*`", "", text)
                if "torchrun " in text:
                    continue
                flags = [f for f in FLAG_RE.findall(text) if f in options]
                if flags:
                    found.append(f"{path.relative_to(PACKAGE)}:{line} {flags}")
    assert found == []
