"""The ``starft`` Typer application: command registration and the one place errors become messages."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from starft_cli import __version__
from starft_cli.cli.flags import error_line
from starft_cli.errors import StarftError


def _debug() -> bool:
    return os.environ.get("STARFT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class StarftGroup(TyperGroup):
    """Runs a sub-command and maps every error to one line on stderr (a traceback only with STARFT_DEBUG=1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            _refuse_empty_values([*getattr(ctx, "_protected_args", []), *ctx.args])
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except StarftError as exc:
            if _debug():
                traceback.print_exc()
            typer.echo(f"error: {error_line(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # the reader went away (`starft data list | head -1`): stop quietly, as cat does
            _silence_stdout()
            raise typer.Exit(141) from None
        except OSError as exc:  # a full disk, an I/O error, a permission: the system's words and the file
            if _debug():
                traceback.print_exc()
            typer.echo(f"error: {os_error_line(exc, getattr(ctx, 'invoked_subcommand', None))}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            if _debug():
                traceback.print_exc()
            message = " ".join(str(exc).split()) or type(exc).__name__
            typer.echo(
                f"error: unexpected {type(exc).__name__}: {message} (rerun with STARFT_DEBUG=1 for the traceback "
                "and report it)",
                err=True,
            )
            raise typer.Exit(1) from None


def _refuse_empty_values(args: list[str]) -> None:
    """An empty value (``--out ""``, ``--out=``, an empty positional argument) is refused before any command runs:
    an empty path would otherwise mean the current folder (a run written into it, every image under it classified).

    Raises:
        UsageError: naming the option (or the position) whose value is empty."""
    from starft_cli.errors import UsageError

    for i, arg in enumerate(args):
        option = None
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            option = arg[:-1]
        elif arg.strip() == "":
            previous = args[i - 1] if i else ""
            option = previous if previous.startswith("-") and "=" not in previous else None
            if option is None:
                raise UsageError(
                    f"an empty argument after '{' '.join(args[:i])}'",
                    "Name a file or folder ('.' is the current folder)",
                )
        if option is not None:
            raise UsageError(f"{option} is empty", f"Give {option} a value (a path '.' is the current folder)")


_OS_HINTS = {
    errno.ENOSPC: "Free some disk space and rerun",
    errno.EDQUOT: "Free some of your disk quota and rerun",
    errno.EFBIG: "The file is larger than this file system (or a limit) allows: choose another path",
    errno.EIO: "The device reported an I/O error: check the disk, then rerun",
    errno.EACCES: "Check the permissions, or choose another path",
    errno.EPERM: "Check the permissions, or choose another path",
    errno.EROFS: "The file system is read-only: choose another path",
}
# The commands whose interrupted work a rerun continues: the hint says how.
_CONTINUES = {"finetune": " (a run continues with --resume)", "demo": " (the demo continues where it stopped)"}
_RERUN_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def os_error_line(exc: OSError, command: str | None = None) -> str:
    """One line for an OSError: what the system said, the file, and what to do (``No space left on device: X``).
    The hint names ``--resume`` only under ``command``s that can continue an interrupted run (``finetune``)."""
    what = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno or 0)
    if hint and exc.errno in _RERUN_ERRNOS:
        hint += _CONTINUES.get(command or "", "")
    return f"{what}{where}" + (f". {hint}" if hint else "")


def _one_line_usage_errors() -> None:
    """Click's usage errors as one line, ``error: MESSAGE (see 'starft CMD -h')``, exit 2 (click prints the usage
    line, a hint line and ``Error: ...``); other click errors as ``error: MESSAGE``. ``starft GROUP`` without a
    sub-command still prints the group's help."""
    try:
        from typer._click import exceptions  # typer >= 0.29 vendors click
    except ImportError:  # pragma: no cover - a typer on plain click
        from click import exceptions  # type: ignore[no-redef]

    if getattr(exceptions.ClickException, "starft_one_line", False):
        return

    def show_click(self: Any, file: Any = None) -> None:
        message = " ".join(self.format_message().split())
        typer.echo(f"error: {message}", err=True)

    def show_usage(self: Any, file: Any = None) -> None:
        message = " ".join(self.format_message().split()).rstrip(".")
        hint = f" (see '{self.ctx.command_path} -h')" if self.ctx is not None else ""
        typer.echo(f"error: {message}{hint}", err=True)

    exceptions.ClickException.show = show_click
    exceptions.UsageError.show = show_usage
    exceptions.ClickException.starft_one_line = True


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. under a test runner)
        pass


app = typer.Typer(
    name="starft",
    cls=StarftGroup,
    help="Robust fine-tuning of zero-shot image-text models with StarFT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"starft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    threads: str | None = typer.Option(
        None,
        "--threads",
        metavar="N",
        help="CPU threads per process: a number, auto (the usable cores; default) or torch (torch's defaults). "
        "Also STARFT_THREADS; OMP_NUM_THREADS and OMP_WAIT_POLICY set by you are kept.",
    ),
) -> None:
    """Robust fine-tuning of zero-shot image-text models with StarFT."""
    _setup_logging()
    if threads is not None:
        from starft_cli.threads import apply_thread_policy, parse_threads

        apply_thread_policy(parse_threads(threads))


def _setup_logging() -> None:
    """Warnings from the core as ``warning: ...`` lines on stderr; libraries' retry chatter only with STARFT_DEBUG."""
    level = logging.DEBUG if _debug() else logging.WARNING
    if not _debug():
        # read by huggingface_hub when it is first imported (it is not imported yet: --help stays light)
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class _LowerLevelFormatter(logging.Formatter):
    """``warning: ...`` / ``error: ...`` for problems; info lines (progress) as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so captured output in tests stays right)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _apply_threads_from_env() -> None:
    """The thread policy from ``STARFT_THREADS`` (``--threads`` reapplies it in the root callback); a bad value is
    the usual one-line usage error."""
    from starft_cli.threads import apply_thread_policy

    try:
        apply_thread_policy()
    except StarftError as exc:
        typer.echo(f"error: {error_line(exc)}", err=True)
        sys.exit(exc.exit_code)


def _wrap_help_at_spaces_only() -> None:
    """Help text wraps at spaces only. Click's wrapper also breaks after hyphens, which split flags such as
    ``--dry-run`` over two lines at 80 columns; the help is plain click text (``rich_markup_mode=None``: no rich
    markup, so ``[...]`` in a help string is printed as written, and no table column cuts a flag name)."""
    try:
        from typer._click import _textwrap  # typer >= 0.29 vendors click
    except ImportError:  # pragma: no cover - a typer on plain click
        try:
            from click import _textwrap  # type: ignore[no-redef]
        except ImportError:
            return
    base = _textwrap.TextWrapper
    if getattr(base, "starft_no_hyphen_breaks", False):
        return

    class TextWrapper(base):  # type: ignore[misc,valid-type]
        starft_no_hyphen_breaks = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("break_on_hyphens", False)
            super().__init__(*args, **kwargs)

    _textwrap.TextWrapper = TextWrapper


# The modules of starft_cli/cli that hold commands, in the order `starft --help` lists them. Each ends with
# COMMANDS, a list of cli.command.Command (a command function, or a Typer app of sub-commands).
CLI_MODULES = ("classify", "demo", "finetune", "evaluate", "probe", "pool", "data", "zoo", "cache")


def _register() -> None:
    # Each module defines its commands without importing torch at module level (`starft --help` stays light).
    import importlib

    for name in CLI_MODULES:
        for command in importlib.import_module(f"starft_cli.cli.{name}").COMMANDS:
            command.register(app)


_wrap_help_at_spaces_only()
_one_line_usage_errors()
_register()


def main() -> None:
    """Console entry point. The CPU thread policy is applied first, before any command imports torch (its OpenMP
    runtime reads the wait policy once, when it loads; see :mod:`starft_cli.threads`)."""
    try:
        _apply_threads_from_env()
        app()
    except KeyboardInterrupt:  # pragma: no cover - during start-up
        sys.exit(130)
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # output buffered until exit, reader gone
            _silence_stdout()
