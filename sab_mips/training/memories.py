"""Recording the MIPS problem of a trained model (its keys and queries) for ``tune`` and the benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write
from ..tasks import Task, batch_generator
from .config import TrainConfig


def dump_memories(model: torch.nn.Module, task: Task, train_cfg: TrainConfig, path: str | Path,
                  count: int) -> dict[str, int]:
    """Save the MIPS problem of ``model`` on fresh batches at the training T, for retrieval benchmarks.

    Runs ``model.collect_memories`` on batches of the "memories" stream until at least ``count`` keys are
    pooled, then writes ``path`` (.npz, atomically) with ``keys`` float32 (M, d), k_i = W_k m_i,
    ``queries`` float32 (Q, d), q = W_q ĥ / sqrt(d_k), ``dim`` (d = attn_dim), ``T`` and ``task``.
    Returns {"keys": M, "queries": Q}.
    """
    if not hasattr(model, "collect_memories"):
        raise UserError(f"--record-memories needs a model with memory slots (collect_memories); "
                        f"{type(model).__name__} has none")
    device = next(model.parameters()).device
    keys: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    n_keys, index = 0, 0
    while n_keys < count:
        x, _ = task.make_batch(train_cfg.T, train_cfg.batch_size, batch_generator(train_cfg.seed, index, "memories"))
        memories = model.collect_memories(x.to(device))  # keys (B, N, d), queries (S, B, d)
        k, q = memories["keys"], memories["queries"]
        if k.shape[1] == 0:
            raise UserError(f"the model writes no memory slots at T={train_cfg.T}; nothing to record")
        keys.append(k.reshape(-1, k.shape[-1]).float().cpu().numpy())
        queries.append(q.reshape(-1, q.shape[-1]).float().cpu().numpy())
        n_keys += keys[-1].shape[0]
        index += 1
    arrays = dict(keys=np.concatenate(keys), queries=np.concatenate(queries), dim=np.int64(keys[0].shape[1]),
                  T=np.int64(train_cfg.T), task=np.str_(task.name))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return {"keys": int(arrays["keys"].shape[0]), "queries": int(arrays["queries"].shape[0])}
