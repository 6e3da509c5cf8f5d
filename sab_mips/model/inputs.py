"""The input check every model of the family runs, with messages in torch's style."""
from __future__ import annotations

import torch


def check_input(module: torch.nn.Module, x: object, input_size: int) -> None:
    """Raise ValueError unless x is a (B, T, input_size) tensor with B, T >= 1."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[2] != input_size:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected input of shape (B, T, {input_size}), got {got}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: input needs B >= 1 and T >= 1, got {tuple(x.shape)}")
