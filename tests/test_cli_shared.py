"""The CLI's shared pieces: command registration, the progress-bar factory, the output formats, the zoo kinds."""

from __future__ import annotations

import importlib
import io
import sys

import pytest
import typer
from typer.testing import CliRunner

from starft_cli.cli.app import CLI_MODULES, app
from starft_cli.cli.command import Command
from starft_cli.cli.progress import progress_bar
from starft_cli.errors import UsageError
from starft_cli.formats import OutputFormat, parse_format

runner = CliRunner()


# --- one way to register a command ---------------------------------------------------------------------------


def test_every_command_comes_from_a_modules_commands_list_in_order() -> None:
    declared = [c.name for m in CLI_MODULES for c in importlib.import_module(f"starft_cli.cli.{m}").COMMANDS]
    registered = list(typer.main.get_command(app).commands)
    assert registered == declared
    assert declared == [
        "classify", "demo", "finetune", "wise", "soup", "eval", "report", "probe", "pool", "data", "zoo", "cache"
    ]  # fmt: skip
    for module in CLI_MODULES:
        assert all(isinstance(c, Command) for c in importlib.import_module(f"starft_cli.cli.{module}").COMMANDS)


def test_a_command_and_a_group_register_alike() -> None:
    def hello(name: str = "x") -> None:
        """Say hello (docstring help)."""
        typer.echo(f"hello {name}")

    group = typer.Typer(help="A group of things.", no_args_is_help=True)

    @group.command("sub")
    def sub() -> None:
        """A sub-command."""
        typer.echo("sub ran")

    test_app = typer.Typer()
    for command in (Command("hello", hello, "Say hello."), Command("plain", hello), Command("things", group)):
        command.register(test_app)
    assert runner.invoke(test_app, ["hello", "--name", "y"]).stdout == "hello y\n"
    assert runner.invoke(test_app, ["things", "sub"]).stdout == "sub ran\n"
    top = runner.invoke(test_app, ["--help"]).stdout
    assert "Say hello." in top and "A group of things." in top
    assert "Say hello (docstring help)." in runner.invoke(test_app, ["plain", "--help"]).stdout


# --- one progress-bar factory ----------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_quiet_off_a_terminal_or_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a file
    assert progress_bar() is None and progress_bar(stats=True) is None
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_bar(quiet=True) is None  # e.g. a rank other than 0, or too little work for a bar


def test_on_a_terminal_the_bar_has_the_shared_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress_bar()
    assert isinstance(bar, Progress) and bar.live.transient and bar.console.stderr
    kinds = [type(c) for c in bar.columns]
    assert kinds == [TextColumn, BarColumn, MofNCompleteColumn, TimeRemainingColumn]
    with_stats = progress_bar(stats=True, transient=False)
    assert not with_stats.live.transient
    assert [type(c) for c in with_stats.columns] == [
        TextColumn,
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    ]
    assert with_stats.columns[3].text_format == "{task.fields[stats]}"
    with with_stats:
        task = with_stats.add_task("training", total=10, stats="")
        with_stats.update(task, completed=4, stats="loss 1.0")
        assert with_stats.tasks[0].completed == 4


def test_commands_use_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval asks for a bar once, for datasets of PROGRESS_THRESHOLD images or more; finetune's rank > 0 is quiet."""
    from starft_cli.cli import evaluate, finetune

    made: list[dict] = []

    class FakeBar:
        def __init__(self) -> None:
            self.tasks: dict[int, int] = {}

        def start(self) -> None: ...
        def stop(self) -> None: ...
        def add_task(self, name: str, total: int) -> int:
            self.tasks[len(self.tasks)] = 0
            return len(self.tasks) - 1

        def update(self, task: int, completed: int) -> None:
            self.tasks[task] = completed

    bars: list[FakeBar] = []

    def fake(**kwargs):
        made.append(kwargs)
        bars.append(FakeBar())
        return None if kwargs.get("quiet") else bars[-1]

    monkeypatch.setattr(evaluate, "progress_bar", fake)
    with evaluate._progress() as update:
        update("small", 5, evaluate.PROGRESS_THRESHOLD - 1)
        assert made == []
        update("big", 10, evaluate.PROGRESS_THRESHOLD)
        update("big2", 20, evaluate.PROGRESS_THRESHOLD)
    assert made == [{}] and bars[0].tasks == {0: 10, 1: 20}  # one bar, a task per large dataset

    monkeypatch.setattr(finetune, "progress_bar", fake)
    monkeypatch.setenv("RANK", "1")
    with finetune._Progress():
        pass
    assert made[-1] == {"stats": True, "transient": False, "quiet": True}


# --- one output-format enum ------------------------------------------------------------------------------------


def test_parse_format_accepts_the_offered_formats_only() -> None:
    assert parse_format("md") is OutputFormat.md
    assert [str(f) for f in OutputFormat] == ["table", "md", "csv", "json"]
    probe = OutputFormat.choices("table", "json", "csv")
    assert parse_format("csv", probe) is OutputFormat.csv
    with pytest.raises(UsageError) as caught:
        parse_format("md", probe)
    assert caught.value.one_line() == "unknown format 'md'. Use one of table, json, csv"
    with pytest.raises(UsageError, match="unknown format 'xml'"):
        parse_format("xml")
    assert caught.value.exit_code == 2


def test_a_subset_enum_keeps_the_names_values_and_order() -> None:
    subset = OutputFormat.choices("table", "json")
    assert [m.value for m in subset] == ["table", "json"] and subset.json == OutputFormat.json
    assert OutputFormat(subset.json) is OutputFormat.json
    with pytest.raises(ValueError):
        OutputFormat.choices("table", "xml")


@pytest.mark.parametrize(
    ("args", "offered"),
    [
        (["classify", "x.jpg", "--labels", "a,b"], "'table', 'json', 'csv'"),
        (["zoo", "list"], "'table', 'json'"),
        (["eval", "-m", "x", "--data", "d"], "Use one of table, md, csv, json"),
        (["report", "r.json"], "Use one of table, md, csv, json"),
        (["probe", "-m", "a", "-r", "b", "-d", "c"], "Use one of table, json, csv"),
    ],
)
def test_every_format_option_refuses_what_it_does_not_offer(args: list[str], offered: str) -> None:
    done = runner.invoke(app, [*args, "--format", "xml"])
    assert done.exit_code == 2 and offered in done.stderr and "'xml'" in done.stderr


# --- zoo kinds declared once -----------------------------------------------------------------------------------


def test_zoo_kinds_are_declared_once() -> None:
    from starft_cli.cli import zoo as zoo_cli
    from starft_cli.zoo.manifest import KINDS, ZooKind

    assert KINDS == ("zero-shot", "starft", "baseline") == tuple(ZooKind)
    assert zoo_cli.ZooKind is ZooKind
    done = runner.invoke(app, ["zoo", "list", "--kind", "nope"])
    assert done.exit_code == 2 and "'zero-shot', 'starft', 'baseline'" in done.stderr
