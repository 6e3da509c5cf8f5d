"""Signs of ill-conditioning in one SAB pass, cheap enough to log with every update.

* ``min_gap_sum``: the smallest S = Σ_j ReLU(a_j − δ) over attention steps and sequences, δ the (K+1)-th
  candidate score. The paper's sparsifier divides by S, so its gradient grows like 1/S: near ties (S → 0)
  it explodes. (Logged for every sparsifier, as a measure of how close the top scores are.)
* ``max_slot_norm``: the largest norm of a slot written in the pass. Slots that hold h = ĥ + s contain the
  summaries of older slots and can grow through a sequence; with the dot scorer larger keys win.
* ``old_attention``: the share of attention weight on slots written more than ``k_trunc`` steps before the
  attending step, i.e. the long-range skip connections SAB exists for (0: the model attends only to what
  truncated BPTT would reach anyway).

Sums stay tensors during the pass (no per-step host sync); ``as_metrics`` reads them once.
Shapes: B batch, C candidates, K = k_top.
"""
from __future__ import annotations

import torch


class AttentionDiagnostics:
    """Accumulates the three diagnostics over one pass; see the module docstring."""

    def __init__(self, k_top: int, k_att: int, k_trunc: int) -> None:
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, k_trunc
        self.min_gap_sum: torch.Tensor | None = None
        self.max_slot_norm: torch.Tensor | None = None
        self.old_weight: torch.Tensor | float = 0.0
        self.total_weight: torch.Tensor | float = 0.0

    @torch.no_grad()
    def slot(self, h: torch.Tensor) -> None:
        """A slot (B, H) was written."""
        norm = h.norm(dim=1).max()
        self.max_slot_norm = norm if self.max_slot_norm is None else torch.maximum(self.max_slot_norm, norm)

    @torch.no_grad()
    def attention(self, t: int, ids: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor) -> None:
        """Attention step t over candidates ids (B, C) (-1 pads) with scores and weights (B, C)."""
        valid = ids >= 0
        if scores.shape[1] > self.k_top:
            masked = scores.masked_fill(~valid, float("-inf"))
            delta = masked.topk(self.k_top + 1, dim=1).values[:, self.k_top :]  # (B, 1)
            usable = torch.isfinite(delta).squeeze(1)  # sequences with more than K slots
            gaps = (torch.relu(masked - delta.masked_fill(~torch.isfinite(delta), 0.0)) * valid).sum(dim=1)
            gap = gaps.masked_fill(~usable, float("inf")).min()
            self.min_gap_sum = gap if self.min_gap_sum is None else torch.minimum(self.min_gap_sum, gap)
        written = (ids + 1) * self.k_att - 1  # slot j is written after step (j + 1)·k_att − 1
        old = valid & (t - written > self.k_trunc)
        self.old_weight = self.old_weight + (weights * old).sum()
        self.total_weight = self.total_weight + (weights * valid).sum()

    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.min_gap_sum is not None and bool(torch.isfinite(self.min_gap_sum)):
            out["min_gap_sum"] = float(self.min_gap_sum)
        if self.max_slot_norm is not None:
            out["max_slot_norm"] = float(self.max_slot_norm)
        if float(self.total_weight) > 0:
            out["old_attention"] = float(self.old_weight) / float(self.total_weight)
        return out
