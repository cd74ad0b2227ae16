"""`--help` of every command and sub-command renders (found by walking the command tree, so new commands are
covered), reads at 80 columns, and shows the defaults a user needs."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from starft_cli.cli.app import app

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    def walk(command, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            found += walk(sub, [*path, name])
        return found

    return walk(typer.main.get_command(app), [])


PATHS = _command_paths()


def test_the_walk_finds_nested_commands() -> None:
    names = {" ".join(p) for p in PATHS}
    assert {
        "",
        "classify",
        "finetune",
        "eval",
        "report",
        "data list",
        "zoo add",
        "zoo publish",
        "cache list",
        "cache clear",
    } <= names


def _help(path: list[str], columns: int = 80) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
    assert result.exit_code == 0, (path, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (path, result.exception)
    return result.output


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "starft")
def test_every_help_renders_and_reads_at_80_columns(path: list[str]) -> None:
    text = _help(path)
    assert "Usage:" in text and "Traceback" not in text and "error:" not in text
    assert all(len(line) <= 80 for line in text.splitlines()), [line for line in text.splitlines() if len(line) > 80]
    assert "…" not in text  # no flag name or help cut short
    assert "<bool>" not in text
    # a flag is never split over two lines (click also wraps after hyphens)
    assert not re.search(r"--[\w-]*-\n", text), text
    declared = set()
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for param in command.params:
        declared.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    for flag in declared:
        assert flag in text, f"{flag} missing or cut in the help of {' '.join(path)}"


def test_help_with_rich_markup_characters_in_option_help() -> None:
    """The crash: `[/FILE.safetensors]` in `zoo add --source`'s help was read as a rich closing tag."""
    text = _help(["zoo", "add"])
    assert "hf-hub:ORG/NAME[/FILE.safetensors]@COMMIT" in text


def test_finetune_help_shows_the_data_and_backbone_defaults() -> None:
    text = " ".join(_help(["finetune"]).split())
    assert "default ViT-B-16" in text and "default imagenet" in text


def test_data_list_reads_at_100_columns(tmp_path) -> None:
    from starft_cli.data.registry import get_builder, list_datasets

    result = runner.invoke(app, ["data", "list", "--data-root", str(tmp_path)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    for name in list_datasets():
        info = get_builder(name).info
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        block = " ".join(lines[start : start + 4])
        assert f"folder {info.folder}/" in block and f"splits {','.join(info.splits)}" in block  # never cut
        assert "not present" in block
    assert "imagenet-v2" in result.stdout and "starft data download" in result.stdout


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """`starft data list | head -1` once printed 'error: unexpected BrokenPipeError'."""

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("starft_cli.data.registry.list_datasets", closed)
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 141 and "error" not in result.output and "BrokenPipe" not in result.output
