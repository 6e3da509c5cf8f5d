"""Sweeping one backend's parameters on recorded memories: recall@K against search time.

The grid ranges over the backend's factory parameters, the number in its FAISS descriptor (``nlist`` of
``IVF<nlist>``, ``M`` of ``HNSW<M>``) and ``k_cand``, the candidates retrieved per query. Each setting is
searched on S sequences of N slots sampled from the recorded memories, with the recorded queries, and
measured by recall@k_top against exact search (the approximate top-K being the K best of its k_cand
candidates by exact score, as in the model; ``retrieval.metrics.recall_at_k``) and by search time per query.
Settings that differ only in search-time parameters share one build.

Shapes: S sequences, N slots per sequence, d key size, Q queries (query i goes to sequence i mod S).

Example::

    >>> points = settings("faiss:HNSW32,exact_below=0", {"efSearch": [16, 64], "k_cand": [6]}, k_top=5)
    >>> rows, exact = measure(points, "mem.npz", k_top=5, n=1000, sequences=8, n_queries=64, repeats=3, seed=0)
    >>> recommend(rows, target=0.95)["retrieval"]
    'faiss:HNSW32,exact_below=0,efSearch=64'
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from indexes import make_index, parse_factory_string

from ..errors import UserError
from .datasets import load_memories, make_dataset
from ..retrieval.factory import make_user_index
from ..retrieval.metrics import recall_at_k, score_scale
from .timing import build_key, time_search, timed

DESCRIPTOR_KEYS = {"IVF": "nlist", "HNSW": "M"}  # the number in a FAISS descriptor, tunable by name


def settings(backend: str, grid: dict[str, list[int | float]], k_top: int) -> list[tuple[str, int]]:
    """Every (factory string, k_cand) of the grid; unknown keys and invalid values are refused."""
    base = make_user_index(backend)
    name, positionals, params = parse_factory_string(backend)
    descriptor_key = None
    match = re.fullmatch(r"(IVF|HNSW)(\d+)", positionals[0]) if positionals else None
    if match:
        descriptor_key = DESCRIPTOR_KEYS[match.group(1)]
    valid = [*base.params, "k_cand", *([descriptor_key] if descriptor_key else [])]
    unknown = sorted(set(grid) - set(valid))
    if unknown:
        raise UserError(f"unknown grid parameter(s) {', '.join(unknown)} for index '{base}'; "
                        f"valid: {', '.join(valid)}")
    for key in [k for k in grid if k in ("k_cand", descriptor_key)]:
        if not all(isinstance(v, int) and v >= 1 for v in grid[key]):
            raise UserError(f"--grid {key}: values must be integers >= 1, got {grid[key]}")
    if "k_cand" in grid and min(grid["k_cand"]) < k_top + 1:
        raise UserError(f"--grid k_cand: values must be >= k_top+1 = {k_top + 1}, got {grid['k_cand']}")
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        k_cand = int(point.pop("k_cand", k_top + 1))
        descriptor = positionals[:]
        if descriptor_key in point:
            descriptor[0] = f"{match.group(1)}{point.pop(descriptor_key)}"
        args = descriptor + [f"{k}={v}" for k, v in {**params, **point}.items()]
        spec = name + (":" + ",".join(args) if args else "")
        make_user_index(spec)  # validates every value now, before any timing starts
        out.append((spec, k_cand))
    return out


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (lower time, higher recall), fastest first."""
    frontier: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r["ms_per_query"], -r["recall"])):
        if not frontier or row["recall"] > frontier[-1]["recall"]:
            frontier.append(row)
    return frontier


def recommend(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The fastest row reaching ``target`` recall (None if none does)."""
    good = [r for r in rows if r["recall"] >= target]
    return min(good, key=lambda r: r["ms_per_query"]) if good else None


def measure(points: list[tuple[str, int]], memories: str | Path, k_top: int, n: int, sequences: int,
            n_queries: int, repeats: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Recall@k_top and search time per query of every (spec, k_cand); and the exact baseline."""
    pools = load_memories(memories)
    S = sequences
    Q = -(-n_queries // S) * S
    keys, queries, note = make_dataset("memories", S, n, pools[0].shape[1], Q, seed, pools)
    exact = make_index("exact")
    exact.reset(S, keys.shape[2])
    exact.add(keys)
    exact_seconds, (truth, _) = time_search(exact, queries, S, k_top, repeats)
    baseline = {"ms_per_query": 1e3 * exact_seconds / Q, "note": note, "S": S, "N": n, "Q": Q}
    scale = score_scale(queries, keys)
    rows, built = [], {}
    for spec, k_cand in points:
        index = make_index(spec)
        key = build_key(index)
        if key not in built:
            index.reset(S, keys.shape[2])
            build_seconds, _ = timed(lambda: (index.add(keys), index.flush()))
            built[key] = (index, build_seconds)
        shared, build_seconds = built[key]
        if index.search_params():
            shared.set_params(**index.search_params())
        seconds, (found, _) = time_search(shared, queries, S, k_cand, repeats)
        recall = float(recall_at_k(found[:, :k_top], truth, scale).double().mean())
        rows.append({"retrieval": spec, "k_cand": k_cand, "recall": recall,
                     "ms_per_query": 1e3 * seconds / Q, "build_s": build_seconds,
                     "time_vs_exact": seconds / exact_seconds if exact_seconds > 0 else float("inf")})
    return rows, baseline
