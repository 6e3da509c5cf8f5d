"""``faiss:Flat``: FAISS exhaustive inner-product search (``IndexFlatIP``), one native index per sequence.

Shapes: B sequences, N keys per sequence, d key dimension, k results.

It returns the exact top-k, ``argmax_i qᵀx_i``, like ``exact``; it exists as the FAISS reference and to
measure the per-sequence calling overhead (see ``indexes._faiss``). Scores are recomputed from the stored
keys in the queries' dtype, so they equal brute force up to float rounding.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("faiss:Flat")
    >>> index.reset(batch_size=2, dim=8)
    >>> index.add(torch.randn(2, 100, 8))                        # (B, n, d)
    >>> scores, ids = index.search(torch.randn(2, 8), k=4)      # (B, k) each
"""
from __future__ import annotations

from typing import Any

from ._faiss import FAISS_PARAMS, FaissIndex, register_variant


@register_variant
class FaissFlat(FaissIndex):
    pattern = "Flat"
    descriptor_help = "Flat"
    params = FAISS_PARAMS

    def descriptor(self) -> str:
        return "Flat"

    def _new_native(self, b: int) -> Any:
        return self._place(self._faiss.IndexFlatIP(self.dim))

    def _native_nbytes(self, native: Any) -> int:
        return native.ntotal * self.dim * 4
