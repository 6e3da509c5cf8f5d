"""``Task``: the interface every task implements, so that one training loop serves them all.

    x, y = task.make_batch(T, batch_size, generator)   # a training batch, a pure function of the generator
    logits = model(x)                                    # (B, L, task.output_size)
    loss = task.loss(logits, y)                          # scalar, what training minimises
    task.metrics(logits, y)                              # {"loss": ..., primary: ...}

Evaluation reads ``eval_batch(T, batch_size, index, seed)``: for a synthetic task a fixed draw from its eval
stream; for a task with held-out data (``pixels``) the index-th slice of its held-out split.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch

from ..errors import UserError


class Task(ABC):
    """A sequence task; subclasses set the class attributes and the four methods.

    Attributes:
        name: registry key.
        input_size: features per input step.
        output_size: logits per step (classes, or 1 for regression).
        min_T: smallest valid length parameter.
        primary: the metric shown in progress bars and summaries.
        higher_is_better: whether a larger ``primary`` is better.
        describe: one line for ``--help`` and ``sab-mips info``.
        scored_steps: how many of a sequence's last steps ``primary`` is computed on (retrieval audits look
            at those steps apart: ``scored_recall``).
    """

    name: str
    input_size: int
    output_size: int
    min_T: int
    primary: str
    higher_is_better: bool
    describe: str
    scored_steps: int

    def scored_from(self, steps: int) -> int:
        """The first step ``primary`` is computed on, in a sequence of ``steps`` steps (audits start there)."""
        return steps - self.scored_steps

    def check_T(self, T: int) -> None:
        """Raise UserError unless T is a valid length parameter for this task."""
        if not isinstance(T, int) or T < self.min_T:
            raise UserError(f"T={T!r} is too small for task '{self.name}' (needs T >= {self.min_T})")

    @abstractmethod
    def seq_len(self, T: int) -> int:
        """Number of time steps L of a sequence with length parameter T."""

    @abstractmethod
    def make_batch(self, T: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a batch: x (B, L, input_size) float32 and the targets y, a pure function of the generator state."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss (a differentiable scalar) of logits (B, L, C) against y."""

    @abstractmethod
    def chunk_loss(self, logits: torch.Tensor, y: torch.Tensor, start: int, steps: int) -> torch.Tensor:
        """The share of ``loss`` of the steps [start, start + L') of a sequence of ``steps`` steps, from their
        logits (B, L', C): over consecutive chunks that cover the sequence the shares sum to ``loss``
        (the memory-bounded engine takes the loss chunk by chunk)."""

    @abstractmethod
    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Evaluation metrics as plain floats; always includes ``loss`` and ``primary``."""

    def eval_batch(self, T: int, batch_size: int, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation batch ``index``: the same (T, batch_size, index, seed) always gives the same batch. Here a
        draw from the eval stream of ``seed``; tasks with held-out data return a slice of it."""
        return self.make_batch(T, batch_size, batch_generator(seed, index, "eval"))

    def eval_batches(self, batch_size: int) -> int | None:
        """How many evaluation batches of ``batch_size`` exist (None: as many as asked for)."""
        return None


def batch_generator(seed: int, index: int, stream: str) -> torch.Generator:
    """A generator whose state is a pure function of (seed, stream, index); streams: train, eval, memories."""
    digest = hashlib.sha256(f"{stream}:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
