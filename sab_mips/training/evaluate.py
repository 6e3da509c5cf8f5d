"""Evaluation on fixed batches of a task's eval stream (at any T: length transfer)."""
from __future__ import annotations

import torch

from ..tasks import Task, batch_generator
from .numerics import flush_denormals


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, T: int, batches: int, seed: int, batch_size: int) -> dict[str, float]:
    """Mean task metrics over ``batches`` fixed batches of the eval stream of ``seed``, at length T.

    The same (seed, T) always gives the same batches, so evaluations along a run are comparable. SAB
    models run in chunks (``SABLSTM.predict``): memory grows with the slots, not with T.
    """
    task.check_T(T)
    flush_denormals()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    for j in range(batches):
        x, y = task.make_batch(T, batch_size, batch_generator(seed, j, "eval"))
        x, y = x.to(device), y.to(device)
        logits = model.predict(x).logits if hasattr(model, "predict") else model(x)
        for name, value in task.metrics(logits, y).items():
            totals[name] = totals.get(name, 0.0) + value
    model.train(was_training)
    return {name: value / batches for name, value in totals.items()}
