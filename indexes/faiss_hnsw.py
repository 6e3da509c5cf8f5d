"""``faiss:HNSW<M>``: FAISS HNSW graphs, one per sequence, serving MIPS in one of two ways.

Shapes: B sequences, n keys per ``add``, N keys per sequence, d key dimension, k results.

``mips=ip`` (default): an ``IndexHNSWFlat`` with the inner-product metric, searched for ``argmax qᵀx``
directly. Inner product is not a metric, so the greedy graph walk has no guarantee; it works on
structured data and degrades on isotropic keys with varied norms.

``mips=l2``: the one-extra-dimension reduction of Bachrach et al. (2014). With M >= max_i ‖x_i‖, keys
become ``x̃ = [x ; sqrt(M² − ‖x‖²)]`` (all of norm M) and queries ``q̃ = [q ; 0]``, so
``‖q̃ − x̃‖² = ‖q‖² + M² − 2 qᵀx``: the L2 nearest neighbour of q̃ is the MIPS answer, and the graph is
an ordinary L2 HNSW over d+1 dimensions. Keys arrive over time, so M is a policy: each sequence uses
``M = norm_cap(max‖x‖)``, the smallest point of a geometric grid (ratio 2^(1/4)) above the largest norm
seen (``indexes.base.norm_cap``). When a key crosses the grid point, that sequence's graph is rebuilt
from its stored keys (``stats()['rebuilds']``); rebuilds are bounded by the number of grid points
crossed, and M depends only on the keys held, not on how they were batched.

Build policy: keys are inserted into the graph in slot order, one ``add`` call per key, at the next
search. FAISS inserts a batch level by level and in parallel, so a batched graph depends on the batch
boundaries and on thread scheduling; one key per call gives the same graph however keys were added
(and makes seeded runs identical), at the price of the parallel build speed.

Calling pattern: below ``exact_below`` keys per sequence the graphs are not used and searches are the
batched exact torch search (at N=1000 the graph search loop is slower than brute force; see
``indexes._faiss``). ``efSearch`` and ``exact_below`` are search-time parameters.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("faiss:HNSW32,efSearch=64,mips=l2,exact_below=0")
    >>> index.reset(batch_size=2, dim=16)
    >>> index.add(torch.randn(2, 500, 16))                      # (B, n, d)
    >>> scores, ids = index.search(torch.randn(2, 16), k=8)     # (B, k) each
    >>> index.set_params(efSearch=128)                          # no rebuild
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._faiss import FAISS_PARAMS, FaissIndex, as_numpy, register_variant
from .base import Param, non_negative, norm_cap, positive


@register_variant
class FaissHNSW(FaissIndex):
    pattern = r"HNSW(\d+)"
    descriptor_help = "HNSW<M>"
    gpu_ok = False
    params = {
        "efSearch": Param(int, 64, "candidate list size of the graph search", True, positive, "must be >= 1"),
        "efConstruction": Param(int, 40, "candidate list size while inserting", False, positive, "must be >= 1"),
        "mips": Param(str, "ip", "ip: inner-product graph; l2: L2 graph over [x; sqrt(M²-‖x‖²)]", False,
                      lambda v: v in ("ip", "l2"), "must be ip or l2"),
        "exact_below": Param(int, 4096, "keys per sequence below which searches are exact (batched torch)",
                             True, non_negative, "must be >= 0"),
        **FAISS_PARAMS,
    }

    def __init__(self, M: int, **values: Any) -> None:
        if M < 2:
            raise ValueError(f"index 'faiss:HNSW{M}': the graph degree M must be >= 2")
        self.M = M
        super().__init__(**values)

    def descriptor(self) -> str:
        return f"HNSW{self.M}"

    def _reset(self) -> None:
        super()._reset()
        self._max_norm = [0.0] * self.batch_size
        self._caps = [1.0] * self.batch_size
        self._rebuilds = 0

    def _add(self, keys: torch.Tensor) -> None:
        super()._add(keys)
        if self.get_param("mips") == "l2":
            norms = keys.to(torch.float64).norm(dim=2).amax(dim=1).tolist()
            self._max_norm = [max(a, b) for a, b in zip(self._max_norm, norms)]

    def _ready(self, b: int) -> bool:
        return self._store.count >= self.get_param("exact_below")

    def _new_native(self, b: int) -> Any:
        faiss = self._faiss
        if self.get_param("mips") == "l2":
            self._caps[b] = norm_cap(self._max_norm[b])
            native = faiss.IndexHNSWFlat(self.dim + 1, self.M, faiss.METRIC_L2)
        else:
            native = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        native.hnsw.efConstruction = self.get_param("efConstruction")
        return native

    def _fill(self, b: int, start: int, stop: int) -> None:
        if self.get_param("mips") == "l2" and norm_cap(self._max_norm[b]) != self._caps[b]:
            self._natives[b], start = self._new_native(b), 0
            self._rebuilds += 1
        vectors = self._native_vectors(b, self._store.view()[b, start:stop])
        native = self._natives[b]
        for i in range(vectors.shape[0]):
            native.add(vectors[i : i + 1])

    def _native_vectors(self, b: int, keys: torch.Tensor) -> np.ndarray:
        if self.get_param("mips") == "ip":
            return as_numpy(keys)
        x = keys.to(torch.float64)
        extra = (self._caps[b] ** 2 - (x * x).sum(dim=1, keepdim=True)).clamp(min=0.0).sqrt()
        return as_numpy(torch.cat([x, extra], dim=1))

    def _native_queries(self, queries: torch.Tensor) -> np.ndarray:
        if self.get_param("mips") == "ip":
            return as_numpy(queries)
        return as_numpy(torch.cat([queries, queries.new_zeros(queries.shape[0], 1)], dim=1))

    def _search_params(self) -> Any:
        params = self._faiss.SearchParametersHNSW()
        params.efSearch = self.get_param("efSearch")
        return params

    def _native_nbytes(self, native: Any) -> int:
        return native.ntotal * native.d * 4 + native.hnsw.neighbors.size() * 4 + native.hnsw.levels.size() * 4

    def _state_dict(self) -> dict[str, Any]:
        return {**super()._state_dict(), "max_norm": list(self._max_norm), "caps": list(self._caps),
                "rebuilds": self._rebuilds}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        super()._load_state_dict(state)
        self._max_norm, self._caps, self._rebuilds = list(state["max_norm"]), list(state["caps"]), state["rebuilds"]

    def _deserialize(self, data: np.ndarray) -> Any:
        native = super()._deserialize(data)
        # FAISS does not serialize the generator that draws each inserted key's graph level: a read index
        # starts it afresh (seed 12345, like a new one), so later inserts would get other levels and another
        # graph. It draws once per inserted key (``HNSW::random_level``) and nothing else uses it, so
        # drawing once per key already held brings it to where the saved index's generator stood.
        rng = native.hnsw.rng
        for _ in range(native.hnsw.levels.size()):
            rng.rand_float()
        return native

    def stats(self) -> dict[str, float]:
        return {"rebuilds": float(self._rebuilds)} if self._batch_size is not None else {}
