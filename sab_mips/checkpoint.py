"""Atomic files of a run directory: checkpoint, config, metrics log and memory dumps.

A run directory holds

    config.json      {"model": SABConfig fields, "train": TrainConfig fields}
    metrics.jsonl    one JSON object per line: {"split": "train" | "eval", "step": ..., ...}
    checkpoint.pt    model + optimizer state, step, elapsed seconds, both configs, torch RNG state

Every file that a reader might see half-written is written to a temporary file in the same directory and
moved over the old one with ``os.replace`` (atomic on POSIX), so a run killed at any moment leaves either the
old or the new version, never a torn one. Only ``metrics.jsonl`` is appended to in place; a torn last line
is dropped when it is read.

Example:
    >>> save_checkpoint(path, {"step": 3, ...})
    >>> load_checkpoint(path)["step"]
    3
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_KEYS = ("model_state", "optimizer_state", "step", "elapsed", "model_config", "train_config")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failed or interrupted write must not leave temporary files behind.
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with the UTF-8 ``text``."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (must hold ``CHECKPOINT_KEYS``)."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; UserError if it is missing, truncated or foreign."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain containers only, so refuse anything that would
        # need to unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file (RuntimeError, EOFError, pickle errors)
        # only the first sentence: torch appends advice (e.g. to disable weights_only) that does not apply
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "").split(". ")[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise UserError(f"checkpoint {path} is not a sab-mips checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return state


def save_config(run_dir: str | os.PathLike, model_config: dict[str, Any], train_config: dict[str, Any]) -> None:
    """Atomically write ``config.json`` with both configs."""
    text = json.dumps({"model": model_config, "train": train_config}, indent=2, sort_keys=True) + "\n"
    atomic_write_text(Path(run_dir) / CONFIG_FILE, text)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete JSON lines of a metrics log ([] if the file does not exist); a torn line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: str | os.PathLike, max_step: int) -> None:
    """Atomically rewrite a metrics log without the lines logged after ``max_step`` (and without torn lines).

    A run killed between two checkpoints has logged steps that the resumed run will redo; dropping them
    keeps exactly one line per step and split.
    """
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLog:
    """Append-only JSON-lines writer; each line is flushed so a killed run keeps everything logged so far."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
