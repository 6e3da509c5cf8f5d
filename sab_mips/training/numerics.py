"""The one process-wide numeric setting the engine makes, in one place."""
from __future__ import annotations

import torch


def flush_denormals() -> None:
    """Flush denormal floats to zero on the CPU (training, evaluation and the benchmarks call this).

    Saturated gates of an untrained SAB on long sequences produce denormal floats, which slow CPU
    arithmetic 5-100x; flushing them to zero changes no result that matters at float32 precision.
    """
    torch.set_flush_denormal(True)
