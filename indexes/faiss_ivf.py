"""``faiss:IVF<nlist>``: FAISS inverted file with exact inner products inside the lists (``IndexIVFFlat``).

Shapes: B sequences, N keys per sequence, d key dimension, k results, nlist coarse centroids.

A k-means coarse quantizer splits each sequence's keys into ``nlist`` lists; a query scans the
``nprobe`` lists whose centroids have the largest inner product with it (``argmax qᵀc``), so a search
costs about N·nprobe/nlist inner products instead of N.

Training policy (keys arrive over time, a quantizer needs keys to train on): with
``T = min_train · nlist`` (FAISS asks for at least 39 points per centroid),

* while a sequence holds fewer than T keys, searches are exact (batched torch brute force);
* once it holds N >= T keys, its quantizer is trained on the *prefix* of its first ``P = T · 2^j`` keys,
  the largest such prefix held, and all N keys are assigned to lists;
* when N reaches the next ``T · 2^(j+1)``, the quantizer is retrained on that longer prefix and the
  lists rebuilt (``stats()['trainings']``): later keys, which may come from a drifted distribution,
  are at least half of the training data, and the total training work stays O(final N).

Training on a prefix whose length depends only on N (not on when searches happened) makes the index a
function of the keys held: adding slots one at a time or all at once gives the same quantizer, the
same lists and the same results. Training and list building happen lazily, at the next search
(see ``indexes._faiss``). k-means uses FAISS's fixed default seed, so runs are reproducible.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("faiss:IVF16,nprobe=4")
    >>> index.reset(batch_size=2, dim=16)
    >>> index.add(torch.randn(2, 1000, 16))                     # (B, n, d); 1000 >= 39*16: trained
    >>> scores, ids = index.search(torch.randn(2, 16), k=8)     # (B, k) each
    >>> index.set_params(nprobe=8)                              # no retraining
"""
from __future__ import annotations

from typing import Any

from ._faiss import FAISS_PARAMS, FaissIndex, register_variant
from .base import Param, positive


@register_variant
class FaissIVF(FaissIndex):
    pattern = r"IVF(\d+)"
    descriptor_help = "IVF<nlist>"
    params = {
        "nprobe": Param(int, 8, "lists scanned per query", True, positive, "must be >= 1"),
        "min_train": Param(int, 39, "keys per centroid needed before the quantizer is trained", False,
                           positive, "must be >= 1"),
        **FAISS_PARAMS,
    }

    def __init__(self, nlist: int, **values: Any) -> None:
        if nlist < 1:
            raise ValueError(f"index 'faiss:IVF{nlist}': nlist must be >= 1")
        self.nlist = nlist
        super().__init__(**values)

    def descriptor(self) -> str:
        return f"IVF{self.nlist}"

    def _reset(self) -> None:
        super()._reset()
        self._trained_on = [0] * self.batch_size
        self._trainings = 0
        self._train_size_of: tuple[int, int] = (-1, 0)  # (N, its P): asked for every sequence of every search

    def _train_size(self) -> int:
        """The prefix length P = T·2^j <= N that the quantizers are trained on (0: not yet)."""
        count = self._store.count
        if self._train_size_of[0] != count:
            size = self.get_param("min_train") * self.nlist
            if count < size:
                size = 0
            else:
                while 2 * size <= count:
                    size *= 2
            self._train_size_of = (count, size)
        return self._train_size_of[1]

    def _ready(self, b: int) -> bool:
        return self._train_size() > 0

    def _new_native(self, b: int) -> Any:
        faiss = self._faiss
        size = self._train_size()
        quantizer = faiss.IndexFlatIP(self.dim)
        native = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        # FAISS warns on every training below 39 points per centroid; min_train is that number, chosen
        # by the user, so the warning (one line per sequence and training) would only flood the logs
        native.cp.min_points_per_centroid = min(native.cp.min_points_per_centroid, self.get_param("min_train"))
        native.train(self._native_vectors(b, self._store.view()[b, :size]))
        self._trained_on[b] = size
        self._trainings += 1
        return self._place(native)

    def _place(self, cpu_index: Any) -> Any:
        native = super()._place(cpu_index)
        if self.on_gpu:  # a GPU index takes nprobe as a setting, not per search (see _search_params)
            self._faiss.GpuParameterSpace().set_index_parameter(native, "nprobe", self.get_param("nprobe"))
        return native

    def _fill(self, b: int, start: int, stop: int) -> None:
        if self._trained_on[b] != self._train_size():
            self._natives[b], start = self._new_native(b), 0
        super()._fill(b, start, stop)

    def _on_params_changed(self) -> None:
        if self.on_gpu and self._batch_size is not None:
            for native in self._natives:
                if native is not None:
                    self._faiss.GpuParameterSpace().set_index_parameter(native, "nprobe", self.get_param("nprobe"))

    def _search_params(self) -> Any:
        if self.on_gpu:
            return None  # set on the GPU indexes themselves (_on_params_changed)
        return self._faiss.SearchParametersIVF(nprobe=self.get_param("nprobe"))

    def _native_nbytes(self, native: Any) -> int:
        return native.ntotal * (self.dim * 4 + 8) + self.nlist * self.dim * 4

    def _state_dict(self) -> dict[str, Any]:
        return {**super()._state_dict(), "trained_on": list(self._trained_on), "trainings": self._trainings}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        super()._load_state_dict(state)
        self._trained_on, self._trainings = list(state["trained_on"]), state["trainings"]

    def stats(self) -> dict[str, float]:
        return {"trainings": float(self._trainings)} if self._batch_size is not None else {}
