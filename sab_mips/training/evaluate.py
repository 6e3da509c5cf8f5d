"""Evaluation on fixed batches of a task's eval stream (at any T: length transfer)."""
from __future__ import annotations

import time

import torch

from ..devices import synchronize
from ..retrieval.stats import RetrievalStats
from ..tasks import Task
from .audit import audited_pass
from .numerics import flush_denormals


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, T: int, batches: int, seed: int, batch_size: int,
             audit_every: int = 0, timed: bool = False, chunk: int = 1000) -> dict[str, float]:
    """Mean task metrics over ``batches`` fixed evaluation batches (``task.eval_batch``), at length T: for a
    synthetic task draws from the eval stream of ``seed``, for an image task the first images of its held-out
    split (``batches`` is capped at the split's size). Means are over sequences (a last, shorter batch
    weighs by its size).

    The same (seed, T) always gives the same batches, so evaluations along a run are comparable. SAB
    models run in chunks (``SABLSTM.predict``): memory grows with the slots, not with T.
    ``audit_every`` > 0 (models that retrieve): every n-th attention step is compared with exact search and
    ``recall`` / ``mass_recovered`` are added, and so are ``scored_recall`` / ``scored_mass_recovered``, the
    same over every attention step among the last ``task.scored_steps`` (those the task's metric reads).
    ``timed``: ``ms_per_step`` (the model's time per time step of one batch, data generation and audits
    excluded) and ``retrieval_seconds`` are added. ``chunk``: time steps fed to a SAB model at once.
    """
    task.check_T(T)
    flush_denormals()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    stats = RetrievalStats()
    seconds = 0.0
    options = audited_pass(task, task.seq_len(T), audit_every)
    available = task.eval_batches(batch_size)
    batches = batches if available is None else min(batches, available)
    sequences = 0
    for j in range(batches):
        x, y = task.eval_batch(T, batch_size, j, seed)
        x, y = x.to(device), y.to(device)
        synchronize(device)
        start = time.perf_counter()
        if hasattr(model, "predict"):
            out = model.predict(x, chunk=chunk, options=options)
            logits = out.logits
            stats.merge(out.stats)
            seconds -= out.stats.audit_seconds  # the audits measure retrieval; they are not part of its cost
        else:
            logits = model(x)
        synchronize(device)
        seconds += time.perf_counter() - start
        rows = x.shape[0]
        sequences += rows
        for name, value in task.metrics(logits, y).items():
            totals[name] = totals.get(name, 0.0) + value * rows
    model.train(was_training)
    metrics = {name: value / sequences for name, value in totals.items()}
    if audit_every:
        audited = ("recall", "mass_recovered", "scored_recall", "scored_mass_recovered")
        metrics.update({k: v for k, v in stats.as_metrics().items() if k in audited})
    if timed:
        metrics["ms_per_step"] = 1000 * seconds / (batches * task.seq_len(T))  # per step of one batch
        metrics["retrieval_seconds"] = stats.search_seconds + stats.add_seconds
    return metrics

