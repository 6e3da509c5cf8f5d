"""What the FAISS backends share: the lazy import, the ``faiss:`` factory grammar, and the calling pattern.

Shapes: B sequences, n keys per ``add``, N keys per sequence, d key dimension, k results.

Factory strings: ``faiss:<descriptor>,key=value,...`` with one descriptor, ``Flat``, ``HNSW<M>`` or
``IVF<nlist>`` (``faiss:HNSW32,efSearch=64``); ``faiss-gpu:`` takes ``Flat`` and ``IVF<nlist>`` and puts the
native indexes on the GPU (FAISS has no GPU HNSW).

Design for the calling pattern (a model searches B=64 queries per step, one per sequence, while every
memory grows by one slot every few steps):

* One native FAISS index per sequence. A shared index with id offsets cannot answer "the top-k of
  sequence b only" in one call: over-fetching and filtering has no bound on how far to over-fetch
  (memories of a batch are alike), and FAISS selectors apply to a whole call, not to each query.
  So a search is a loop of B native calls, each on a single query.
* Keys are copied into a torch ``KeyStore`` and moved into the native indexes lazily, at the next
  search (``flush``): adds cost one tensor copy, and the native adds of all keys that arrived since the
  last search happen in one go. The store also gives exact re-ranking: the native search only proposes
  ids, and the returned scores are exact inner products of the stored keys, in the queries' dtype
  and on their device (this also maps the MIPS->L2 reduction's distances back to inner products).
* Measured overhead (``sab-mips bench retrieval``'s calling-pattern section: B=64, d=128, k=8,
  one search per step and one new slot every 4 steps; 2-core shared CPU, noisy, see benchmarks/README.md):
  at N=16, where searching is nearly free, ``faiss:Flat`` costs 0.53 ms per step against 0.25 ms for the
  batched ``exact``: about 4-5 us per native call. At N=1000 the B calls read the same 33 MB of keys as
  brute force and ``faiss:Flat`` takes 2.1 ms per step against 3.2 ms for ``exact`` (0.64x); the loop
  does not dominate. HNSW at N=1000 visits most of its graph and costs 7.2 ms per step (2.2x exact),
  which is why ``faiss:HNSW`` answers exactly (batched torch) below ``exact_below`` keys per sequence
  (default 4096; then 1.0x exact) and IVF before its quantizer is trained. Timings on that machine
  vary by up to 2x between runs; benchmarks/README.md records a later run.

Results the native index leaves empty (id -1) become the contract's padding (-inf, -1).

FAISS's OpenMP threads inside a search or a flush: ``threads`` (default 1; ``faiss_threads``). The native
calls are single queries and k-means trainings on one sequence's keys; on a machine whose cores are busy
with other jobs, FAISS's threads wait for each other at every parallel region. Measured (2-core CPU, two
busy-loop processes at the same priority, the demo's model evaluated through ``faiss:IVF4,nprobe=2``):
388 ms per time step with FAISS's default of 2 threads, 3.0 ms with one. The price of one thread: on an
idle many-core machine a large training (10⁵ keys) runs on one core; ``threads=0`` leaves FAISS its own
count (one per core) and ``threads=n`` sets n. The caller's thread count is restored after each call, so
FAISS calls made outside these indexes keep theirs.

GPU: ``faiss-gpu`` needs a FAISS build with GPU support and a visible GPU; it could not be tested here
(the development machine has neither), so the GPU path is written to FAISS's documented API
(``StandardGpuResources``, ``index_cpu_to_gpu``) and guarded by ``unavailable_reason``. The CPU ``faiss``
backend also accepts CUDA tensors: keys and queries make a host round trip and the results come back
to the queries' device.
"""
from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from .base import MIPSIndex, Param, non_negative
from .exact import KeyStore, brute_force_topk, rerank

FAISS_MISSING = "faiss is not installed (pip install faiss-cpu)"


def load_faiss() -> Any:
    """Import faiss on first use, so that ``indexes`` imports without it."""
    import faiss

    return faiss


def faiss_missing_reason() -> str | None:
    try:
        load_faiss()
    except ImportError:
        return FAISS_MISSING
    return None


def gpu_missing_reason() -> str | None:
    reason = faiss_missing_reason()
    if reason is not None:
        return reason
    faiss = load_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return "faiss build has no GPU support (install a faiss GPU build)"
    if not torch.cuda.is_available() or faiss.get_num_gpus() < 1:
        return "needs CUDA (no GPU visible)"
    return None


@contextmanager
def faiss_threads(faiss: Any, threads: int) -> Iterator[None]:
    """FAISS's OpenMP thread count set to ``threads`` inside the block (0: left as it is) and restored after
    it (see the module docstring)."""
    if threads == 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# The parameters every FAISS variant takes (each variant's ``params`` includes them).
FAISS_PARAMS = {
    "threads": Param(int, 1, "FAISS's OpenMP threads in searches and flushes (0: FAISS's own, one per core); "
                             "1 stays fast when other jobs share the cores", True, non_negative, "must be >= 0"),
}


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """float32, C-contiguous host copy (no copy for a contiguous CPU float32 tensor)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class FaissIndex(MIPSIndex):
    """``faiss:<descriptor>,...``: dispatches the descriptor to a variant (Flat, HNSW, IVF)."""

    name = "faiss"
    variants: ClassVar[dict[str, type[FaissIndex]]] = {}  # filled by the variant modules
    pattern: ClassVar[str] = ""  # regex of the descriptor, e.g. r"HNSW(\d+)"
    on_gpu: ClassVar[bool] = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return gpu_missing_reason() if cls.on_gpu else faiss_missing_reason()

    @classmethod
    def from_factory(cls, positionals: list[str], params: dict[str, str]) -> FaissIndex:
        choices = ", ".join(v.descriptor_help for v in cls.variants.values() if v.gpu_ok or not cls.on_gpu)
        if len(positionals) != 1:
            raise ValueError(f"index '{cls.name}' needs exactly one descriptor ({choices}), got {positionals}")
        for variant in cls.variants.values():
            match = re.fullmatch(variant.pattern, positionals[0])
            if match is None:
                continue
            if cls.on_gpu and not variant.gpu_ok:
                raise ValueError(f"index '{cls.name}' does not support {positionals[0]}; valid descriptors: {choices}")
            target = variant.gpu_class() if cls.on_gpu else variant
            return target(*(int(g) for g in match.groups()), **params)
        raise ValueError(f"unknown descriptor {positionals[0]!r} for index '{cls.name}'; valid descriptors: {choices}")

    # ---- what variants define -----------------------------------------------------------------
    descriptor_help: ClassVar[str] = ""
    gpu_ok: ClassVar[bool] = True

    @classmethod
    def gpu_class(cls) -> type[FaissIndex]:
        """The same variant with native indexes on the GPU (registered as ``faiss-gpu``)."""
        if cls not in _GPU_VARIANTS:
            _GPU_VARIANTS[cls] = type(cls.__name__ + "Gpu", (cls,), {"name": "faiss-gpu", "on_gpu": True})
        return _GPU_VARIANTS[cls]

    @abstractmethod
    def descriptor(self) -> str:
        """The positional part of the factory string, e.g. ``HNSW32``."""

    @abstractmethod
    def _new_native(self, b: int) -> Any:
        """A fresh, empty native index for sequence b."""

    def _ready(self, b: int) -> bool:
        """Whether sequence b is answered by its native index (False: batched exact search)."""
        return True

    def _native_vectors(self, b: int, keys: torch.Tensor) -> np.ndarray:
        """The vectors of keys (n, d) of sequence b as the native index stores them."""
        return as_numpy(keys)

    def _native_queries(self, queries: torch.Tensor) -> np.ndarray:
        return as_numpy(queries)

    def _fill(self, b: int, start: int, stop: int) -> None:
        """Move keys [start, stop) of sequence b into its native index (called in slot order)."""
        self._natives[b].add(self._native_vectors(b, self._store.view()[b, start:stop]))

    def _search_params(self) -> Any:
        return None

    def _native_nbytes(self, native: Any) -> int:
        return 0

    def _deserialize(self, data: np.ndarray) -> Any:
        """A native index from ``faiss.serialize_index``'s bytes, on its device, ready to search and add to
        exactly like the one that was saved (variants restore here what FAISS does not serialize)."""
        return self._place(self._faiss.deserialize_index(data))

    # ---- the contract -------------------------------------------------------------------------
    def factory_args(self) -> list[str]:
        return [self.descriptor(), *super().factory_args()]

    def _reset(self) -> None:
        self._faiss = load_faiss()
        self._store = KeyStore()
        self._natives: list[Any] = [None] * self.batch_size
        self._filled = [0] * self.batch_size  # keys of each sequence already in its native index
        self._gpu_resources = None

    def _add(self, keys: torch.Tensor) -> None:
        self._store.append(keys)

    def _flush(self) -> None:
        with faiss_threads(self._faiss, self.get_param("threads")):
            self._flush_natives()

    def _flush_natives(self) -> None:
        for b in range(self.batch_size):
            if not self._ready(b):
                continue
            if self._natives[b] is None:
                self._natives[b], self._filled[b] = self._new_native(b), 0
            if self._filled[b] < self._store.count:
                self._fill(b, self._filled[b], self._store.count)
                self._filled[b] = self._store.count

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with faiss_threads(self._faiss, self.get_param("threads")):
            return self._search_natives(queries, k)

    def _search_natives(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._flush_natives()
        native = [b for b in range(self.batch_size) if self._ready(b)]
        keys = self._store.view()
        if len(native) < self.batch_size:
            scores, ids = brute_force_topk(keys, queries, k)
        else:
            scores = ids = None
        if not native:
            return scores, ids
        q = self._native_queries(queries)
        found = np.full((self.batch_size, k), -1, dtype=np.int64)
        dist = np.empty((self.batch_size, k), dtype=np.float32)
        params = self._search_params()
        for b in native:
            self._natives[b].search(q[b : b + 1], k, params=params, D=dist[b : b + 1], I=found[b : b + 1])
        found_t = torch.from_numpy(found).to(queries.device)
        found_t = found_t.masked_fill(found_t >= self._store.count, -1)
        native_scores, native_ids = rerank(keys, queries, found_t)
        if scores is None:
            return native_scores, native_ids
        rows = torch.tensor(native, device=queries.device)
        scores[rows], ids[rows] = native_scores[rows], native_ids[rows]
        return scores, ids

    def _state_dict(self) -> dict[str, Any]:
        # the native indexes themselves, not the keys to rebuild them from: a rebuild would redo the k-means
        # trainings, the graph insertions and their random levels, which need not come out the same
        natives = [None if native is None else self._serialize(native) for native in self._natives]
        return {"store": self._store.state_dict(), "natives": natives, "filled": list(self._filled)}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        self._store.load_state_dict(state["store"], self._device)
        self._natives = [None if data is None else self._deserialize(data.cpu().numpy()) for data in state["natives"]]
        self._filled = list(state["filled"])

    def _serialize(self, native: Any) -> torch.Tensor:
        """``faiss.serialize_index``'s bytes as a uint8 tensor (``torch.load(weights_only=True)`` refuses numpy
        arrays); GPU indexes are copied to the host first."""
        if self.on_gpu:
            native = self._faiss.index_gpu_to_cpu(native)
        return torch.from_numpy(self._faiss.serialize_index(native))

    def _gpu(self) -> Any:
        """Shared GPU resources of this index (faiss-gpu only)."""
        if self._gpu_resources is None:
            self._gpu_resources = self._faiss.StandardGpuResources()
        return self._gpu_resources

    def _place(self, cpu_index: Any) -> Any:
        """The native index on its device: unchanged for ``faiss``, copied to the GPU for ``faiss-gpu``."""
        if not self.on_gpu:
            return cpu_index
        on_cuda = self._device is not None and self._device.type == "cuda" and self._device.index is not None
        return self._faiss.index_cpu_to_gpu(self._gpu(), self._device.index if on_cuda else 0, cpu_index)

    def nbytes(self) -> int:
        return self._store.nbytes() + sum(self._native_nbytes(n) for n in self._natives if n is not None)


class FaissGpuIndex(FaissIndex):
    """``faiss-gpu:<descriptor>,...``: Flat and IVF with native indexes on the GPU (untested here)."""

    name = "faiss-gpu"
    on_gpu = True


_GPU_VARIANTS: dict[type[FaissIndex], type[FaissIndex]] = {}


def register_variant(cls: type[FaissIndex]) -> type[FaissIndex]:
    """Make a descriptor (``cls.pattern``) known to ``faiss:`` and ``faiss-gpu:``."""
    FaissIndex.variants[cls.__name__] = cls
    return cls
