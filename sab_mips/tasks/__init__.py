"""The tasks: synthetic long-range problems generated on the fly (``TASKS``: copy, adding) and pixel-by-pixel
image classification from files (``IMAGE_TASKS``: pixels, pixels-permuted). The text task streams a corpus and
has a loop of its own (``training.stream``).

    task = get_task("copy")                   # or get_task("pixels-permuted", data="fashion-mnist")
    x, y = task.make_batch(T=100, batch_size=64, generator=torch.Generator().manual_seed(0))
    logits = model(x)                        # (B, L, task.output_size)
    loss = task.loss(logits, y)              # scalar, what training minimises
    task.metrics(logits, y)                  # {"loss": ..., "accuracy": ...}
"""
from __future__ import annotations

from ..errors import UserError
from .base import Task, batch_generator
from .pixels import PixelTask, pixel_order
from .synthetic import AddingTask, CopyTask

TASKS: dict[str, Task] = {task.name: task for task in (CopyTask(), AddingTask())}
IMAGE_TASKS: dict[str, bool] = {"pixels": False, "pixels-permuted": True}  # name -> whether the order is permuted
TASK_NAMES = (*TASKS, *IMAGE_TASKS, "text")


def get_task(name: str, data: str | None = None, permutation_seed: int = 0) -> Task:
    """The task called ``name``; UserError listing the valid names otherwise. ``data`` and ``permutation_seed``
    apply to the image tasks (a dataset name or a directory of IDX files; None: Fashion-MNIST)."""
    if name in IMAGE_TASKS:
        return PixelTask(name, IMAGE_TASKS[name], data=data, permutation_seed=permutation_seed)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid choices: {', '.join(TASK_NAMES)}")
    if data is not None:
        raise UserError(f"task {name!r} generates its data: it takes no data")
    return TASKS[name]


__all__ = ["TASKS", "IMAGE_TASKS", "TASK_NAMES", "Task", "CopyTask", "AddingTask", "PixelTask", "batch_generator",
           "get_task", "pixel_order"]
