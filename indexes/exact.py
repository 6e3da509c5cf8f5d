"""``exact``: brute-force inner products and top-k in torch; the reference for every other backend.

One (B, capacity, d) buffer holds all sequences' keys, so a search is a single batched matmul
(B, N, d) x (B, d) -> (B, N) and one ``topk``: no per-sequence calls. The buffer doubles when full,
so appending one slot at a time costs amortised O(B d).
"""
from __future__ import annotations

import torch

from .base import MIPSIndex, pad_results


class ExactIndex(MIPSIndex):
    name = "exact"

    def _reset(self) -> None:
        self._keys: torch.Tensor | None = None

    def _add(self, keys: torch.Tensor) -> None:
        B, n, d = keys.shape
        needed = self._count + n
        if self._keys is None or self._keys.shape[1] < needed:
            capacity = max(16, needed, 2 * (0 if self._keys is None else self._keys.shape[1]))
            grown = keys.new_empty((B, capacity, d))
            if self._keys is not None:
                grown[:, : self._count] = self._keys[:, : self._count]
            self._keys = grown
        self._keys[:, self._count : needed] = keys

    @property
    def keys(self) -> torch.Tensor:
        """The stored keys, (B, N, d) (a view; do not modify)."""
        self._require_reset()
        if self._keys is None:
            return torch.empty(self._batch_size, 0, self._dim)
        return self._keys[:, : self._count]

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.bmm(self.keys, queries.unsqueeze(2)).squeeze(2)  # (B, N)
        top_scores, top_ids = scores.topk(min(k, self._count), dim=1)
        return pad_results(top_scores, top_ids, k)

    def nbytes(self) -> int:
        return 0 if self._keys is None else self._keys.numel() * self._keys.element_size()
