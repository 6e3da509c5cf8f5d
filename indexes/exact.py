"""``exact``: brute-force inner products and top-k in torch; the reference for every other backend.

Shapes: B sequences, N keys per sequence, d key dimension, k results.

One (B, capacity, d) buffer (``KeyStore``) holds all sequences' keys, so a search is a single batched
matmul (B, N, d) x (B, d) -> (B, N) and one ``topk``: no per-sequence calls. The buffer doubles when
full, so appending one slot at a time costs amortised O(B d). The other backends keep the same store
for their exact re-rank and for rebuilds.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("exact")
    >>> index.reset(batch_size=1, dim=2)
    >>> index.add(torch.tensor([[[1., 0.], [0., 2.]]]))
    >>> index.search(torch.tensor([[0., 1.]]), k=3)[1].tolist()
    [[1, 0, -1]]
"""
from __future__ import annotations

import torch

from .base import MIPSIndex, pad_results


class KeyStore:
    """A growable (B, capacity, d) buffer of keys in their own dtype and device."""

    def __init__(self) -> None:
        self._keys: torch.Tensor | None = None
        self.count = 0

    def append(self, keys: torch.Tensor) -> None:
        """keys: (B, n, d)."""
        B, n, d = keys.shape
        needed = self.count + n
        if self._keys is None or self._keys.shape[1] < needed:
            capacity = max(16, needed, 2 * (0 if self._keys is None else self._keys.shape[1]))
            grown = keys.new_empty((B, capacity, d))
            if self._keys is not None:
                grown[:, : self.count] = self._keys[:, : self.count]
            self._keys = grown
        self._keys[:, self.count : needed] = keys
        self.count = needed

    def view(self) -> torch.Tensor:
        """The stored keys, (B, N, d) (a view; do not modify). Requires at least one append."""
        assert self._keys is not None
        return self._keys[:, : self.count]

    def nbytes(self) -> int:
        return 0 if self._keys is None else self._keys.numel() * self._keys.element_size()


def brute_force_topk(keys: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k: keys (B, N, d), queries (B, d) -> scores, ids (B, k), padded when N < k."""
    scores = torch.bmm(keys, queries.unsqueeze(2)).squeeze(2)  # (B, N)
    top_scores, top_ids = scores.topk(min(k, keys.shape[1]), dim=1)
    return pad_results(top_scores, top_ids, k)


def rerank(keys: torch.Tensor, queries: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores of candidate ids (B, c) (``-1`` = none), sorted best first; missing ones score -inf."""
    valid = ids >= 0
    safe = ids.clamp(min=0)
    picked = keys.gather(1, safe.unsqueeze(2).expand(-1, -1, keys.shape[2]))  # (B, c, d)
    scores = torch.bmm(picked, queries.unsqueeze(2)).squeeze(2)  # (B, c)
    scores = scores.masked_fill(~valid, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    ids = ids.masked_fill(~valid, -1)
    return scores.gather(1, order), ids.gather(1, order)


class ExactIndex(MIPSIndex):
    name = "exact"
    exact = True

    def _reset(self) -> None:
        self._store = KeyStore()

    def _add(self, keys: torch.Tensor) -> None:
        self._store.append(keys)

    @property
    def keys(self) -> torch.Tensor:
        """The stored keys, (B, N, d) (a view; do not modify)."""
        self._require_reset()
        if self._count == 0:
            return torch.empty(self._batch_size, 0, self._dim)
        return self._store.view()

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return brute_force_topk(self._store.view(), queries, k)

    def nbytes(self) -> int:
        return self._store.nbytes()
