"""The synthetic tasks: long-range problems generated on the fly (copy, adding).

Shapes: B batch, L = task.seq_len(T) time steps, C = task.output_size.
``T`` is the task's length parameter (copy: blanks + 1; adding: sequence length), so the same model can be
evaluated at another T than it was trained at (transfer).

Data streams are reproducible: ``batch_generator(seed, i, "train")`` seeds batch i of a run from (seed, i)
alone, so the data never depend on how many updates ran in one process (resume is exact).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task


class CopyTask(Task):
    """Memorise 10 digits, wait T steps, reproduce them (the released SAB code's format).

    Sequence of L = T + 20 steps over 10 symbols (0 blank, 1–8 digits, 9 marker):
    steps 0..9 hold the digits, then T − 1 blanks, the marker at step T + 9, then 10 blanks.
    Targets are blanks for the first T + 10 steps, then the 10 digits.

    x: (B, T + 20, 10) one-hot float32; y: (B, T + 20) int64 class indices.
    Metrics: ``accuracy`` over the last 10 steps, cross-entropy over all steps (``loss`` = ``ce_all``)
    and over the last 10 (``ce_last10``). The training loss is the cross-entropy over all steps.

    Example:
        >>> x, y = CopyTask().make_batch(5, 2, torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([2, 25, 10]), torch.Size([2, 25]))
    """

    name = "copy"
    input_size = 10
    output_size = 10
    min_T = 1
    primary = "accuracy"
    higher_is_better = True
    describe = "copy: recall 10 digits (1-8) after T-1 blanks and a marker; accuracy on the last 10 steps"
    n_digits = 10
    scored_steps = n_digits
    blank, marker = 0, 9

    def seq_len(self, T: int) -> int:
        return T + 2 * self.n_digits

    def make_batch(self, T: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_T(T)
        L, n = self.seq_len(T), self.n_digits
        digits = torch.randint(1, 9, (batch_size, n), generator=generator)  # (B, 10), values 1..8
        inputs = torch.full((batch_size, L), self.blank, dtype=torch.long)
        inputs[:, :n] = digits
        inputs[:, T + n - 1] = self.marker
        y = torch.full((batch_size, L), self.blank, dtype=torch.long)
        y[:, -n:] = digits
        x = F.one_hot(inputs, self.input_size).float()  # (B, L, 10)
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def chunk_loss(self, logits: torch.Tensor, y: torch.Tensor, start: int, steps: int) -> torch.Tensor:
        targets = y[:, start : start + logits.shape[1]]
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        return total / (y.shape[0] * steps)  # the mean over all B·steps targets, this chunk's part of it

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        n = self.n_digits
        last_logits, last_y = logits[:, -n:], y[:, -n:]
        ce_all = self.loss(logits, y).item()
        ce_last = F.cross_entropy(last_logits.reshape(-1, logits.shape[-1]), last_y.reshape(-1)).item()
        accuracy = (last_logits.argmax(-1) == last_y).float().mean().item()
        return {"loss": ce_all, "accuracy": accuracy, "ce_all": ce_all, "ce_last10": ce_last}


class AddingTask(Task):
    """Add the two marked values of a sequence (Hochreiter & Schmidhuber 1997).

    Sequence of L = T steps with two channels: a value drawn uniformly in [0, 1] and a marker bit.
    Exactly one marker lies in the first half (steps 0..T//2 − 1) and one in the second (T//2..T − 1).
    The target is the sum of the two marked values, read from the output at the last step.

    x: (B, T, 2) float32; y: (B,) float32. Loss and metric ``mse``: squared error at the last step.

    Example:
        >>> x, y = AddingTask().make_batch(6, 2, torch.Generator().manual_seed(0))
        >>> x.shape, y.shape, x[..., 1].sum(1).tolist()
        (torch.Size([2, 6, 2]), torch.Size([2]), [2.0, 2.0])
    """

    name = "adding"
    input_size = 2
    output_size = 1
    min_T = 2
    primary = "mse"
    higher_is_better = False
    describe = "adding: sum the two marked values (one per half) of a length-T sequence; MSE at the last step"
    scored_steps = 1

    def seq_len(self, T: int) -> int:
        return T

    def make_batch(self, T: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_T(T)
        half = T // 2
        values = torch.rand(batch_size, T, generator=generator)  # (B, T) in [0, 1)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, T, (batch_size,), generator=generator)
        markers = torch.zeros(batch_size, T)
        rows = torch.arange(batch_size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        y = values[rows, first] + values[rows, second]  # (B,)
        return torch.stack([values, markers], dim=-1), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits[:, -1, 0], y)

    def chunk_loss(self, logits: torch.Tensor, y: torch.Tensor, start: int, steps: int) -> torch.Tensor:
        if start + logits.shape[1] < steps:  # only the last step is scored
            return logits.new_zeros(())
        return self.loss(logits, y)

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        mse = self.loss(logits, y).item()
        return {"loss": mse, "mse": mse}
