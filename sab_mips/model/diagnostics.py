"""Signs of ill-conditioning in one SAB pass, cheap enough to log with every update.

* ``min_gap_sum``: the smallest S = Σ_j ReLU(a_j − δ) over attention steps and sequences, δ the (K+1)-th
  candidate score. The paper's sparsifier divides by S, so its gradient grows like 1/S: near ties (S → 0)
  it explodes. (Logged for every sparsifier, as a measure of how close the top scores are.)
* ``max_slot_norm``: the largest norm of a slot written in the pass. Slots that hold h = ĥ + s contain the
  summaries of older slots and can grow through a sequence; with the dot scorer larger keys win.
* ``old_attention``: the share of attention weight on slots written more than ``k_trunc`` steps before the
  attending step, i.e. the long-range skip connections SAB exists for (0: the model attends only to what
  truncated BPTT would reach anyway).

Each attention step only keeps references to its (detached) ids, scores and weights; ``as_metrics``
computes everything in a few batched ops at the end of the pass, so logging them with every update costs
almost nothing.
Shapes: B batch, C candidates, K = k_top.
"""
from __future__ import annotations

import torch

from ..ops.sparsify import relu_sparsify


class AttentionDiagnostics:
    """Collects one pass's attention steps and written slots; ``as_metrics`` turns them into the three
    diagnostics of the module docstring."""

    def __init__(self, k_top: int, k_att: int, k_trunc: int) -> None:
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, k_trunc
        self.slots: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.ids: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []

    def slot(self, h: torch.Tensor) -> None:
        """A slot (B, H) was written."""
        self.slots.append(h.detach())

    def attention(self, t: int, ids: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor) -> None:
        """Attention step t over candidates ids (B, C) (-1 pads) with scores and weights (B, C)."""
        self.steps.append(t)
        self.ids.append(ids)
        self.scores.append(scores.detach())
        self.weights.append(weights.detach())

    @torch.no_grad()
    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.slots:
            out["max_slot_norm"] = float(torch.stack(self.slots).norm(dim=2).max())
        if not self.steps or len({i.shape[1] for i in self.ids}) != 1:
            return out
        ids, scores, weights = torch.stack(self.ids), torch.stack(self.scores), torch.stack(self.weights)  # (S, B, C)
        valid = ids >= 0
        # S of every (step, sequence) from the sparsifier itself; ε enters only its weights, which are not read
        flat_valid = valid.reshape(-1, valid.shape[2])
        flat_scores = scores.reshape(flat_valid.shape).masked_fill(~flat_valid, 0.0)
        gaps = relu_sparsify(flat_scores, self.k_top, 1.0, flat_valid).total.squeeze(1)
        usable = flat_valid.sum(dim=1) > self.k_top  # more than K slots to choose from: δ is a slot's score
        if bool(usable.any()):
            out["min_gap_sum"] = float(gaps[usable].min())
        steps = torch.tensor(self.steps, device=ids.device).view(-1, 1, 1)
        written = (ids + 1) * self.k_att - 1  # slot j is written after step (j + 1)·k_att − 1
        old = valid & (steps - written > self.k_trunc)
        total = float((weights * valid).sum())
        if total > 0:
            out["old_attention"] = float((weights * old).sum()) / total
        return out
