"""What the benchmark harnesses share: where their rows go, and the settings they run under."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from ..devices import set_threads
from ..io import write_json
from ..training.numerics import flush_denormals


def prepare(threads: int | None) -> None:
    """The benchmarks' process settings: ``threads`` intra-op threads (None: torch's choice), and flushed
    denormals as in training (``flush_denormals``)."""
    set_threads(threads)
    flush_denormals()


def save_rows(args: argparse.Namespace, rows: list[dict], **extra: object) -> None:
    """Write the benchmark's settings, environment and rows to ``args.out`` (JSON, atomically)."""
    payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
               "rows": rows, **extra}
    write_json(args.out, payload)
    print(f"wrote {args.out}")
