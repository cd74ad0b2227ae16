"""The error hierarchy. Every error a user can cause is a ``StarftError`` with a hint.

The CLI turns these into one line on stderr (see ``starft_cli.cli.app``); the core only raises.

The core speaks of its arguments, never of command-line flags: an error about an argument names it in backticks
(`` `top_k` must be at least 1``) and lists it in ``param``; the CLI shows the flag instead (``--top-k``, see
:mod:`starft_cli.cli.flags`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StarftError(Exception):
    """An error the user can fix. ``hint`` says how; ``param`` names the argument(s) it is about, written in
    backticks in the message and hint."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None, *, param: str | Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())

    def one_line(self, flag: Callable[[str], str] | None = None) -> str:
        """Message and hint on one line. With ``flag`` (the CLI's: argument name -> flag), each `` `name` `` of
        an argument in ``params`` reads as that flag."""
        text = (worker_message(self.message) or self.message).rstrip(".")
        if self.hint:
            text = f"{text}. {self.hint}"
        if flag is not None:
            for name in self.params:
                text = text.replace(f"`{name}`", flag(name))
        return " ".join(text.split())


def worker_message(text: str) -> str | None:
    """The original message inside an error that a torch DataLoader worker raised: torch re-raises it in the main
    process with the worker's whole traceback as its message (``Caught X in DataLoader worker process N. Original
    Traceback ... X: message``). None when ``text`` is not such a message."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    _, sep, message = lines[-1].partition(": ")
    return message.strip() if sep else None


class UsageError(StarftError):
    """Bad flags or flag combinations (exit code 2, like click's usage errors)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid configuration value or combination."""


class ModelNotFoundError(StarftError):
    """A model reference that names nothing we can load."""


class WeightsUnavailableError(StarftError):
    """Weights are neither in the local cache nor reachable."""


class WrongArchitectureError(StarftError):
    """A weights file does not fit the architecture it is loaded into."""


class ImageError(StarftError):
    """A missing, unreadable, corrupt or non-image input file."""


class TemplateError(StarftError):
    """A prompt template or spurious pool that is malformed."""


class DataError(StarftError):
    """A dataset that is missing, unknown or laid out wrongly."""


class SplitError(DataError, UsageError):
    """A split that the dataset does not have (the hint lists those it has). A :class:`DataError` raised by every
    reader, and a usage error (exit code 2) since a flag or suite entry named it."""


class DataRootError(DataError, UsageError):
    """A registered dataset asked for without a data root to find it under (exit code 2, like a missing flag)."""


class ZooError(StarftError):
    """A zoo manifest, lookup, download or publish problem."""


class ChecksumError(ZooError):
    """A downloaded file whose sha256 does not match the manifest."""


class CheckpointError(StarftError):
    """A run directory or checkpoint that cannot be resumed or read."""


class NonFiniteWeightsError(CheckpointError):
    """A weights file (or state dict) holding NaN or infinite values."""


class TrainingDiverged(StarftError):
    """Fine-tuning produced a non-finite loss, gradient or weight (more often than ``--max-bad-steps`` allows)."""


class RunInUseError(CheckpointError):
    """A run directory another starft process is writing (its ``.lock`` names the process)."""


class OutputInUseError(StarftError):
    """An output folder another starft process kept locked for longer than a writer waits (see starft_cli.locks)."""
