"""Data sets for measuring retrieval: keys (S, N, d) for S sequences, queries (Q, d).

* ``gaussian``  (worst case for MIPS): isotropic directions with log-normal norms,
  ``x = g · exp(0.5 z) / sqrt(d)``, g ~ N(0, I_d), z ~ N(0, 1); queries ~ N(0, I_d).
* ``clustered`` (structured, low rank): 32 centres in a rank-16 subspace, keys
  ``x = ((c + 0.3 e) W) · s + 0.05 n`` with W (16, d) random, e, n Gaussian noise and norm factor
  s ~ U(0.5, 1.5); queries are drawn the same way without the norm factor.
* ``memories``  (real): the keys W_k m_i and attention-step queries q an index saw, recorded by
  ``sab-mips train --record-memories FILE`` (``keys`` (M, d), ``queries`` (Q', d), float32). Each sequence
  samples its N keys from the pool without replacement, or with replacement when M < N (reported);
  queries are sampled from the recorded ones the same way.

Example::

    >>> keys, queries, note = make_dataset("clustered", sequences=4, n=1000, dim=128, n_queries=32, seed=0)
    >>> keys.shape, queries.shape
    (torch.Size([4, 1000, 128]), torch.Size([32, 128]))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def load_memories(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The recorded pools: keys (M, d) and queries (Q', d), float32; UserError if the file is not one."""
    try:
        with np.load(path) as data:
            keys = np.asarray(data["keys"], dtype=np.float32)
            queries = np.asarray(data["queries"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read memories {path}: {exc}") from None
    if keys.ndim != 2 or queries.ndim != 2 or keys.shape[1] != queries.shape[1]:
        raise UserError(f"{path}: need keys (M, d) and queries (Q, d), got {keys.shape} and {queries.shape}")
    if keys.shape[0] == 0 or queries.shape[0] == 0:
        raise UserError(f"{path}: holds {keys.shape[0]} keys and {queries.shape[0]} queries; both must be > 0")
    return keys, queries


DATASETS = ("gaussian", "clustered", "memories")


def _sample(pool: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    replace = pool.shape[0] < count
    return pool[rng.choice(pool.shape[0], size=count, replace=replace)], replace


def make_dataset(name: str, sequences: int, n: int, dim: int, n_queries: int, seed: int,
                 memories: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """keys (sequences, n, dim), queries (n_queries, dim), and a note on how they were sampled."""
    g = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        keys = torch.randn(sequences, n, dim, generator=g) / dim**0.5
        keys = keys * torch.exp(0.5 * torch.randn(sequences, n, 1, generator=g))
        return keys, torch.randn(n_queries, dim, generator=g), "isotropic, log-normal norms"
    if name == "clustered":
        rank, centres = 16, 32
        basis = torch.randn(rank, dim, generator=g) / rank**0.5
        c = torch.randn(centres, rank, generator=g)

        def draw(shape: tuple[int, ...]) -> torch.Tensor:
            latent = c[torch.randint(0, centres, shape, generator=g)] + 0.3 * torch.randn(*shape, rank, generator=g)
            return latent @ basis + 0.05 * torch.randn(*shape, dim, generator=g)

        keys = draw((sequences, n)) * (0.5 + torch.rand(sequences, n, 1, generator=g))
        return keys, draw((n_queries,)), f"{centres} centres, rank {rank}"
    if name == "memories":
        if memories is None:
            raise UserError("the memories data set needs recorded memories (load_memories)")
        pool_keys, pool_queries = memories
        rng = np.random.default_rng(seed)
        rows, replaced = [], False
        for _ in range(sequences):
            row, replace = _sample(pool_keys, n, rng)
            rows.append(row)
            replaced |= replace
        queries, q_replaced = _sample(pool_queries, n_queries, rng)
        note = (f"pool of {pool_keys.shape[0]} keys, {pool_queries.shape[0]} queries; keys sampled "
                f"{'WITH replacement (pool < N)' if replaced else 'without replacement'} per sequence, queries "
                f"{'with' if q_replaced else 'without'} replacement")
        return torch.from_numpy(np.stack(rows)), torch.from_numpy(np.ascontiguousarray(queries)), note
    raise UserError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
