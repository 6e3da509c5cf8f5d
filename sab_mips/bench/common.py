"""What the benchmark harnesses share: where their rows go, what each record says of its own origin, and
the settings they run under.

Every JSON record a benchmark writes starts with its ``provenance``: the command that reruns it, the commit
of the code that ran (``-dirty`` when the checkout differed from it), the machine's core count, torch,
threads and the date. A table quoted from such a record can be checked against it, and rerun.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..devices import set_threads
from ..io import write_json
from ..training.numerics import flush_denormals


# the source checkout this package was imported from (sab_mips/bench/common.py -> the repository root)
SOURCE_ROOT = Path(__file__).resolve().parents[2]
# environment variables that change a benchmark's timings (the thread pools of torch and faiss)
TIMING_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
# the commit and the date as the benchmark started (``prepare``): a checkout edited while a benchmark runs
# for hours must not relabel the code that ran
_STARTED: dict[str, Any] = {}


def prepare(threads: int | None) -> None:
    """The benchmarks' process settings: ``threads`` intra-op threads (None: torch's choice), and flushed
    denormals as in training (``flush_denormals``); notes the commit and the date at the start."""
    set_threads(threads)
    flush_denormals()
    _STARTED.update(git_commit=git_commit(), date=_now())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")



def bench_command(benchmark: str, argv: list[str]) -> str:
    """The command line that reruns ``sab-mips bench BENCHMARK`` with ``argv``, quoted for a POSIX shell."""
    return shlex.join(["sab-mips", "bench", benchmark, *argv])


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def git_commit() -> str | None:
    """The short commit of the checkout the code runs from, with ``-dirty`` when files differ from it (tracked
    changes or untracked, not ignored, files: either may be code that ran); None outside a git checkout
    (an installed package, or no git), so that a record never names a commit its code did not come from."""
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() != SOURCE_ROOT:
            return None  # e.g. installed into a virtual environment that lies inside some other repository
        commit = _git("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if _git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(command: str) -> dict[str, Any]:
    """Where a benchmark record comes from: the command, the code (``git_commit``), the machine (its core
    count, which ``threads`` and the other jobs on it share), torch and the date (UTC); commit and date as
    noted by ``prepare`` at the start, else as of now."""
    started = {"git_commit": git_commit(), "date": _now()} if not _STARTED else dict(_STARTED)
    return {"command": command, "env": {k: os.environ[k] for k in TIMING_ENV if k in os.environ},
            "git_commit": started["git_commit"], "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": started["date"]}


def write_record(path: str | os.PathLike, command: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` after its ``provenance`` to ``path`` (JSON, atomically): the one way a benchmark
    writes its record."""
    return write_json(path, {**provenance(command), **payload})


def save_rows(args: argparse.Namespace, rows: list[dict], command: str, **extra: object) -> None:
    """Write the record of a benchmark run by ``command``: its settings and rows, to ``args.out``."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_record(args.out, command, {"settings": settings, "rows": rows, **extra})
    print(f"wrote {args.out}")
