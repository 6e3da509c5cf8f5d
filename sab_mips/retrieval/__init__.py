"""Measuring retrieval, for the model's audits, ``tune`` and the benchmarks: one definition of each measure.

``metrics`` (recall@K, attention mass recovered), ``stats`` (what a forward pass spent in the index and
its audits), ``timing`` (timed searches), ``datasets`` (synthetic keys and recorded memories) and
``tuning`` (a parameter grid on recorded memories, its Pareto frontier and recommendation).
"""
from .metrics import TIE_RTOL, mass_recovered, recall_at_k
from .stats import RetrievalStats

__all__ = ["RetrievalStats", "TIE_RTOL", "mass_recovered", "recall_at_k"]
