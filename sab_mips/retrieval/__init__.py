"""Measuring retrieval, for the model's audits, ``tune`` and the benchmarks: one definition of each measure.

What a model's pass uses: ``metrics`` (recall@K, attention mass recovered), ``stats`` (what a forward pass
spent in the index and its audits) and ``factory`` (the index a config names). The offline tools (data sets
of keys, timed searches, tuning) are in ``sab_mips.offline_retrieval``.
"""
from .metrics import TIE_RTOL, mass_recovered, recall_at_k
from .stats import RetrievalStats

__all__ = ["RetrievalStats", "TIE_RTOL", "mass_recovered", "recall_at_k"]
