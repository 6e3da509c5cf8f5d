"""One optimiser step of a training loop: clip, schedule the learning rate, step (or skip)."""
from __future__ import annotations

import torch

from .config import TrainConfig, learning_rate


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   step: int) -> tuple[torch.Tensor, float, bool]:
    """Clip the gradient in ``model``'s ``.grad`` to ``cfg.grad_clip`` and take ``optimizer``'s step at the
    learning rate of update ``step``; returns the gradient norm, that rate and whether the step was taken.

    SAB's normalised sparsifier has gradients ~1/gap when the top K+1 scores nearly tie, and they can
    overflow: an update with a non-finite gradient is skipped (the caller counts it), never applied.
    """
    # max_norm=inf still returns the norm, which is worth logging even without clipping.
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    lr = learning_rate(cfg, step)
    if not bool(torch.isfinite(grad_norm)):
        return grad_norm, lr, False
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return grad_norm, lr, True
