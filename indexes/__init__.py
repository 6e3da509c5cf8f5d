"""MIPS retrieval backends behind one contract (see ``indexes.base``); independent of ``sab_mips``.

``python -m indexes`` lists the backends, whether each can run here (and why not), and their parameters.
"""
from . import faiss_flat, faiss_hnsw, faiss_ivf  # noqa: F401  (register the faiss descriptors)
from ._faiss import FaissGpuIndex, FaissIndex
from .alsh import ALSHIndex
from .base import MIPSIndex, Param
from .dedup import DedupIndex
from .exact import ExactIndex
from .factory import REGISTRY, available_backends, make_index, parse_factory_string, register
from .simple_lsh import SimpleLSHIndex

for _backend in (ExactIndex, DedupIndex, FaissIndex, FaissGpuIndex, ALSHIndex, SimpleLSHIndex):
    register(_backend)

__all__ = [
    "MIPSIndex",
    "Param",
    "ExactIndex",
    "DedupIndex",
    "FaissIndex",
    "FaissGpuIndex",
    "ALSHIndex",
    "SimpleLSHIndex",
    "REGISTRY",
    "available_backends",
    "make_index",
    "parse_factory_string",
    "register",
]
