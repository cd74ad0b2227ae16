"""Writing the run directory and its checkpoints (the layout itself is :mod:`starft_cli.runs`'s).

A checkpoint folder is written complete under ``checkpoints/.NAME.partial`` and then swapped in by renames, so
a crash at any moment leaves either the previous or the new checkpoint, never a mix. The training state holds
only tensors and plain Python values and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starft_cli.errors import CheckpointError, RunInUseError
from starft_cli.paths import atomic_path, atomic_write_text
from starft_cli.runs import HEAD_NAME, LAST, LOCK_NAME, STATE_NAME, RunLayout

__all__ = [
    "HEAD_NAME",
    "LOCK_NAME",
    "STATE_FORMAT",
    "STATE_NAME",
    "NonFiniteWeights",
    "RunDir",
    "finite_json",
    "load_training_state",
    "run_lock",
    "save_training_checkpoint",
]

STATE_FORMAT = 1

logger = logging.getLogger(__name__)


class RunDir(RunLayout):
    """A run directory being written: the paths of :class:`~starft_cli.runs.RunLayout`, crash recovery, the
    config and the metrics log."""

    def find_checkpoint(self, name: str) -> Path | None:
        """The complete checkpoint ``name``, also after a crash between the two renames of a swap."""
        final = self.checkpoint(name)
        if (final / STATE_NAME).is_file() or (name != LAST and final.is_dir()):
            return final
        old = final.parent / f".{name}.old"
        if (old / STATE_NAME).is_file() or (name != LAST and old.is_dir() and not final.exists()):
            return old
        return None

    def recover(self) -> list[str]:
        """Finish what a crash interrupted, before a resumed run trusts or writes anything: a checkpoint moved
        aside (``.NAME.old``) whose replacement never arrived is moved back, and unfinished ``.NAME.partial``
        folders are removed (they are never read). Returns the names of the checkpoints moved back.

        ``.NAME.old`` is only ever made by renaming a complete ``NAME``, and only deleted once the new ``NAME`` is in
        place, so when ``NAME`` is missing it is the complete previous checkpoint.
        """
        folder = self.checkpoints
        restored = []
        if not folder.is_dir():
            return restored
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if name.startswith(".") and name.endswith(".old") and entry.is_dir():
                final = folder / name[1 : -len(".old")]
                if not final.exists():
                    os.replace(entry, final)
                    restored.append(final.name)
                else:
                    shutil.rmtree(entry)
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") and entry.name.endswith(".partial") and entry.is_dir():
                shutil.rmtree(entry)
        return restored

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config, text)

    @property
    def data_identity(self) -> Path:
        """``RUN/data.json``: the training data's identity at the start (:mod:`starft_cli.train.dataid`)."""
        return self.root / "data.json"

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(finite_json(dict(record)), allow_nan=False) + "\n"  # strict JSON: NaN/inf -> null
        with open(self.metrics, "a", encoding="utf-8") as fh:  # one write per line: a crash loses at most it
            fh.write(line)
            fh.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metrics of steps after ``last_step`` (they are redone on resume), and any torn last line."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= last_step:
                kept.append(line)
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that it is strict JSON."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def save_training_checkpoint(
    run: RunDir,
    name: str,
    model: Any,
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    *,
    arch: str | None,
    metadata: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    head: Any | None = None,
) -> Path:
    """Write checkpoint ``name`` (model folder + optional training state + optional CE head) and swap it in.

    Raises:
        NonFiniteWeights: the weights hold NaN or inf (nothing is written; the previous checkpoint stays).
        OSError: a write failed (e.g. ENOSPC); the previous checkpoint stays and the unfinished folder is removed.
    """
    import torch

    from starft_cli.models import nonfinite_tensors, save_checkpoint

    bad = nonfinite_tensors(model.state_dict())
    if head is not None:
        bad += [f"head.{n}" for n in nonfinite_tensors({"weight": head.detach()})]
    if bad:  # never written: a checkpoint is either finite or absent
        raise NonFiniteWeights(bad)
    final = run.checkpoint(name)
    partial = final.parent / f".{name}.partial"
    old = final.parent / f".{name}.old"
    if partial.exists():
        shutil.rmtree(partial)
    if old.exists() and not final.exists():  # a swap a crash interrupted: the moved-aside one is the complete one
        os.replace(old, final)
    try:
        save_checkpoint(model, partial, model_cfg, preprocess_cfg, arch=arch, metadata=metadata)
        if head is not None:
            from safetensors.torch import save_file

            with atomic_path(partial / HEAD_NAME) as tmp:
                save_file({"weight": head.detach().cpu().contiguous()}, str(tmp))
        if state is not None:
            with atomic_path(partial / STATE_NAME) as tmp:
                torch.save(dict(state), tmp)
    except BaseException:  # a full disk, an I/O error, Ctrl-C: the previous checkpoint stays, no half folder
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)
    return final


class NonFiniteWeights(Exception):
    """Raised by :func:`save_training_checkpoint` instead of writing non-finite weights (the loop turns it into
    :class:`~starft_cli.errors.TrainingDiverged` naming the step)."""

    def __init__(self, tensors: list[str]) -> None:
        super().__init__(f"{len(tensors)} tensors hold NaN or inf (e.g. {tensors[0]})")
        self.tensors = tensors


def load_training_state(folder: Path) -> dict[str, Any]:
    import torch

    path = folder / STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read training state {path} ({exc})", "Start a new run with another `out`", param="out"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a starft training state (format {STATE_FORMAT})")
    return state


def _lock_owner(path: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "?") when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        pid, _, host = text.partition("@")
        return int(pid), host
    except (OSError, ValueError):
        return None, "?"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def run_lock(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``ROOT/.lock`` (``PID@HOST``, created with ``O_EXCL``) while a run writes ``root``; removed at exit.

    A lock left by a process that is no longer running on this host (a SIGKILL, a power cut) is taken over with a
    warning. A folder this call created is removed again at exit when nothing else was written into it.

    Raises:
        RunInUseError: another live process (or one on another host) holds the lock; names its PID and host.
    """
    root = Path(root)
    created = []  # the folders this call makes, deepest first
    for folder in (root, *root.parents):
        if folder.exists():
            break
        created.append(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = RunLayout(root).lock
    host = socket.gethostname()
    me = f"{os.getpid()}@{host}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, owner_host = _lock_owner(path)
            if pid is not None and owner_host == host and pid != os.getpid() and not _pid_alive(pid):
                logger.warning("%s: taking over the lock of process %d, which is no longer running", root, pid)
                path.unlink(missing_ok=True)
                continue
            who = f"pid {pid} on {owner_host}" if pid is not None else "another process"
            raise RunInUseError(
                f"{root} is in use by another starft run ({who}, see {path})",
                "Wait for it to finish or choose another `out`; if that process is gone, delete the lock file",
                param="out",
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(me + "\n")
        break
    else:  # pragma: no cover - a lock taken over by someone else at every try
        raise RunInUseError(f"{root} is in use by another starft run (see {path})", "Try again")
    try:
        yield path
    finally:
        try:
            if path.read_text(encoding="utf-8").strip() == me:
                path.unlink()
        except OSError:
            pass
        for folder in created:  # only when empty: a run that failed before writing anything leaves nothing behind
            try:
                folder.rmdir()
            except OSError:
                break
