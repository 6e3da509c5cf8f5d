"""Choosing the device a run computes on (and its CPU threads), with a clear error when it is not there; the
process's resident memory (what the benchmarks and the streaming metrics report)."""
from __future__ import annotations

import resource

import torch

from .errors import UserError

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"
THREADS_HELP = ("torch's intra-op CPU threads for this process (default: torch's choice, one per core); "
                "1 when several runs share the cores")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable ``torch.device``; UserError otherwise."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {spec!r}; valid: {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {spec!r}; valid: {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r}: CUDA is not available here (a CPU build of torch, or no GPU "
                            f"visible); use --device cpu, or install a CUDA build of torch (docs/gpu-and-distributed.md)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads in this process (None: leave torch's choice); UserError below 1.

    Small operations, which SAB's step is made of, gain little from a second thread: two runs of one thread
    each on two cores do more work than one run of two. The FAISS backends set FAISS's own threads inside
    their searches (their ``threads`` parameter, default 1), whatever this says.
    """
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA must, or they measure only the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_gib(field: str) -> float | None:
    """A memory field (kB) of ``/proc/self/status`` in GiB; None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return None


def peak_rss_gib() -> float:
    """This program's peak resident memory so far, GiB: ``VmHWM`` of ``/proc/self/status`` where there is one
    (Linux), else ``ru_maxrss`` (KiB on Linux). Not ``ru_maxrss`` first: a child started by (v)fork and exec
    inherits its parent's peak in it, so a row would read the parent's peak wherever that is the higher."""
    peak = _status_gib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def rss_gib() -> float | None:
    """This program's resident memory now, GiB (``VmRSS``; None where it cannot be read)."""
    return _status_gib("VmRSS")

