"""Random-number state for measurements that must not disturb training.

An audit's extra pass (the exact-retrieval gradient, for the gradient cosine) runs the model again in
training mode; with exploration (``explore`` > 0) the model draws random slots from torch's global
generator. Run from the state the update's own pass started from, the audit draws the same slots (so the
cosine measures retrieval alone, not exploration noise), and afterwards the generator is where the update
left it (so a run audited more or less often follows the same trajectory).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

RNGState = tuple[torch.Tensor, "torch.Tensor | None"]


def rng_state(device: torch.device) -> RNGState:
    """The global generators' state: the CPU one, and the CUDA one of ``device`` when it is a GPU."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def replaying(state: RNGState, device: torch.device) -> Iterator[None]:
    """Run the block from ``state``, then restore the generators to what they were before the block."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield
