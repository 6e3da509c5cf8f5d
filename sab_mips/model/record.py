"""What a forward pass can report about its attention, for plots, tests and replay."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionRecord:
    """The attention of one forward pass over a batch.

    S attention steps (only those with a non-empty memory), B sequences, C candidates per step,
    K = k_top selected slots, N slots written.

    Attributes:
        steps: (S,) time step of each attention step.
        candidate_ids: (S, B, C) slot ids the retrieval returned (the recorded retrieval decisions; -1 pads).
        slot_ids: (S, B, K) slots with the K largest weights, best first (-1 where fewer slots exist).
        weights: (S, B, K) their sparse attention weights (zero for padding).
        slot_times: (N,) time step at which each slot was written.
    """

    steps: torch.Tensor
    candidate_ids: torch.Tensor
    slot_ids: torch.Tensor
    weights: torch.Tensor
    slot_times: torch.Tensor

    def attention_map(self, b: int = 0, T: int | None = None) -> torch.Tensor:
        """(T, T) matrix: entry [t, u] is the weight step t gave to the slot written at step u, sequence b."""
        T = T if T is not None else int(max(self.steps.max().item() if len(self.steps) else 0,
                                              self.slot_times.max().item() if len(self.slot_times) else 0)) + 1
        out = torch.zeros(T, T)
        for s, t in enumerate(self.steps.tolist()):
            for slot, w in zip(self.slot_ids[s, b].tolist(), self.weights[s, b].tolist()):
                if slot >= 0 and w > 0:
                    out[t, int(self.slot_times[slot])] += w
        return out
