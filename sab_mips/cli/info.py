"""``sab-mips info``: what can run here (versions, device, threads, retrieval backends, models, tasks).

Example:
    >>> print(info_text())
    python   3.11.7
    torch    2.13.0+cpu
    ...
"""
from __future__ import annotations

import argparse
import importlib
import platform

from ..model import MODEL_DOCS, MODEL_FIELDS, MODELS
from ..images import DATASETS
from ..tasks import IMAGE_TASKS, TASKS, get_task

HELP = "versions, device, threads and available retrieval backends"
DESCRIPTION = "Report what can run here."


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install should be reported, not crash the report
        return f"unusable ({type(exc).__name__}: {exc})"


def _faiss_gpus() -> str:
    try:
        import faiss
    except ImportError:
        return "faiss not installed"
    if not hasattr(faiss, "get_num_gpus"):
        return "CPU build of faiss (GPU indexes: pip install -e '.[gpu]', see docs/gpu-and-distributed.md)"
    return f"{faiss.get_num_gpus()} GPU(s) visible to faiss"


def kernel_status() -> str:
    """Which kernel SAB's steps run on by default here (``--kernel auto``), and why."""
    from ..kernel import build_failure

    failure = build_failure()  # builds the extension if it is not cached yet (about a minute, once)
    if failure is None:
        return ("compiled SAB recurrence active (kernel auto: C++, built and cached; --kernel python for the "
                "Python path)")
    return f"Python path (the compiled SAB recurrence is unavailable: {failure})"


def info_lines() -> list[str]:
    """The report, one line per fact; never raises for a missing optional component."""
    import torch

    lines = [f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})"]
    lines += [f"{name:<10} {_version(name)}" for name in ("torch", "numpy", "faiss", "matplotlib", "tqdm")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"device     cuda ({torch.cuda.device_count()}: {names})")
    else:
        lines.append("device     cpu (CUDA not available)")
    lines.append(f"threads    {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    lines.append(f"cuda       {'built for CUDA ' + str(torch.version.cuda) if torch.version.cuda else 'CPU-only build of torch'}")
    lines.append(f"faiss gpu  {_faiss_gpus()}")
    lines.append(f"processes  torch.distributed {'available' if torch.distributed.is_available() else 'unavailable'} "
                 f"(torchrun --nproc-per-node=N -m sab_mips train ...)")

    lines.append(f"kernel     {kernel_status()}")
    lines.append("retrieval backends:")
    try:
        from indexes import available_backends

        for name, reason in available_backends().items():
            lines.append(f"  {name:<12} {'available' if reason is None else 'unavailable: ' + reason}")
    except Exception as exc:
        lines.append(f"  (cannot list: {type(exc).__name__}: {exc})")

    lines.append("models:")
    for name in MODELS:
        used = ", ".join(MODEL_FIELDS.get(name, ())) or "-"
        lines.append(f"  {name:<12} {MODEL_DOCS.get(name, '')} [options: {used}]")

    lines.append("tasks:")
    for task in TASKS.values():
        lines.append(f"  {task.name:<16} {task.describe} (T >= {task.min_T})")
    for name in IMAGE_TASKS:
        lines.append(f"  {name:<16} {get_task(name).describe}")
    for dataset in DATASETS.values():
        installed = "installed" if dataset.directory.is_dir() else f"not installed: {dataset.install}"
        lines.append(f"  data {dataset.name}: {dataset.describe} ({installed})")
    return lines


def info_text() -> str:
    return "\n".join(info_lines())


def configure(parser: argparse.ArgumentParser) -> None:
    """``info`` takes no options."""


def run(args: argparse.Namespace) -> int:
    print(info_text())
    return 0
