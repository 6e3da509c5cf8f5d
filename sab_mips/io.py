"""Files that a reader must never see half-written: one atomic writer, and a JSON reader with clear errors.

Every file is written to a temporary file in the same directory, flushed to disk and moved over the old
one with ``os.replace`` (atomic on POSIX): a process killed at any moment leaves the old or the new version,
never a torn one, and no temporary file behind.

Example:
    >>> write_json("runs/x/result.json", {"accuracy": 0.99})
    >>> read_json("runs/x/result.json", "result")["accuracy"]
    0.99
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary binary file beside ``path``, fsync it, then rename it to ``path``."""
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
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with the UTF-8 ``text``."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Atomically write ``payload`` as indented JSON (with a final newline)."""
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; UserError naming ``what`` if it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a JSON object")
    return data
