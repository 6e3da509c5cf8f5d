"""Timing an index's searches the same way everywhere (tune, the retrieval benchmark).

Shapes: Q queries, S sequences in the index, k results. Query i goes to sequence i mod S: the Q queries
run as Q/S batched searches of S queries each.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from indexes import MIPSIndex

from ..devices import synchronize


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def search_all(index: MIPSIndex, queries: torch.Tensor, sequences: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and ids (Q, k) of Q queries answered as Q/S batched searches of S queries (on CUDA, after the
    device has finished them: a timing must include the work, not only its launch)."""
    results = [index.search(queries[j : j + sequences], k) for j in range(0, queries.shape[0], sequences)]
    out = torch.cat([s for s, _ in results]), torch.cat([i for _, i in results])
    synchronize(queries.device)
    return out


def time_search(index: MIPSIndex, queries: torch.Tensor, sequences: int, k: int,
                repeats: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    """Median seconds of ``search_all`` over ``repeats`` timed runs after one warm-up; and its results."""
    results = search_all(index, queries, sequences, k)  # warm-up
    times = [timed(lambda: search_all(index, queries, sequences, k))[0] for _ in range(repeats)]
    return statistics.median(times), results


def build_key(index: MIPSIndex) -> str:
    """The factory string without search-time parameters: indexes with equal keys share one build."""
    fixed = [a for a in index.factory_args() if a.partition("=")[0] not in index.search_params()]
    return index.name + ":" + ",".join(fixed)
