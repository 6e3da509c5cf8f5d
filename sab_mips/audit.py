"""What approximate retrieval costs, measured inside a forward pass (SPEC §2).

Shapes: B batch, H hidden size, N stored slots, C candidates per attention step, K = k_top.

At an audited attention step the approximate index has returned C candidates, and their scores have been
recomputed exactly. The audit also runs exact search on the same query q̃ over the same slots and
compares:

* **recall@K** = |approx top-K ∩ exact top-K| / K, the approx top-K being the K best candidates by their
  exact recomputed scores (K becomes N when a sequence holds fewer slots);
* **mass recovered** = Σ_{i ∈ approx selection} ReLU(a_i − δ) / Σ_{j ∈ exact top-K} ReLU(a_j − δ), with δ
  the exact threshold (the (K+1)-th score of all slots) and the approx selection the slots with non-zero
  approximate weight: the share of the exact sparse attention mass (before normalisation) that the
  approximate step still puts on the right slots.

Ties: memories hold many equal slots (a copy-task model writes nearly the same state through a run of
blanks), and which of several tied slots is "the" top-K is arbitrary. So membership is by score, not by
id: a candidate counts as an exact top-K slot when its score reaches the exact K-th score (up to a
relative 1e-5 for rounding). Without ties the two definitions agree.

``RetrievalStats`` also accumulates wall time spent in the index (search, add) and in the audit, so a
training loop can report retrieval time against the rest of the step. Sums stay tensors during the pass
(no per-step host sync) and are read once by ``as_metrics``.

Example::

    >>> stats = RetrievalStats()
    >>> stats.audit(query, slots, cand_ids, cand_scores, cand_weights, k=5)
    >>> stats.as_metrics()["recall"]
    0.96
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from indexes.exact import brute_force_topk

from .sparsify import sparsity_threshold

TIE_RTOL = 1e-5  # scores this close (relatively) to the exact K-th score count as reaching it


def exact_candidates(query: torch.Tensor, slots: torch.Tensor, count: int) -> torch.Tensor:
    """The exact top-``count`` slot ids (B, count), -1 padded, for q̃ (B, H) over slots (B, N, H).

    A candidate override (``SABLSTM.candidate_override``): forcing it on a model with an approximate index
    gives the exact-retrieval forward pass, which the gradient-cosine audit and the tests use.
    """
    return brute_force_topk(slots, query, count)[1]


@dataclass
class RetrievalStats:
    """Retrieval time and audit sums of one forward pass (or several, after ``merge``)."""

    search_seconds: float = 0.0
    add_seconds: float = 0.0
    audit_seconds: float = 0.0
    audited_queries: int = 0
    recall_sum: Any = 0.0  # a 0-d tensor during a pass
    mass_sum: Any = 0.0
    audits: str = "on"  # "on", or why the audits were skipped

    def audit(self, query: torch.Tensor, slots: torch.Tensor, cand_ids: torch.Tensor, cand_scores: torch.Tensor,
              cand_weights: torch.Tensor, k: int) -> None:
        """Compare one attention step's approximate candidates with exact search.

        query (B, H) and slots (B, N, H) detached; cand_ids (B, C) (-1 pads), cand_scores (B, C) exact
        recomputed scores, cand_weights (B, C) the sparse weights the step used.
        """
        start = time.perf_counter()
        with torch.no_grad():
            exact_scores, exact_ids = brute_force_topk(slots, query, k + 1)  # (B, K+1)
            exact_valid = exact_ids >= 0
            top_count = exact_valid[:, :k].sum(dim=1)  # min(K, N) per sequence
            # the score a candidate must reach to be an exact top-K slot: the min(K, N)-th exact score
            kth = exact_scores.gather(1, (top_count - 1).clamp(min=0).unsqueeze(1))  # (B, 1)
            bar = kth - TIE_RTOL * kth.abs()
            # the approximate top-K: best K candidates by their exact scores
            masked = cand_scores.masked_fill(cand_ids < 0, float("-inf"))
            best = masked.topk(min(k, masked.shape[1]), dim=1).values  # (B, K), -inf for padding
            recall = (best >= bar).sum(dim=1).clamp(max=top_count) / top_count.clamp(min=1)
            finite = exact_scores.masked_fill(~exact_valid, 0.0)
            delta = sparsity_threshold(finite, k, exact_valid)  # (B, 1), the exact δ
            exact_mass = (torch.relu(finite - delta) * exact_valid)[:, :k].sum(dim=1)
            selected = (cand_weights > 0) & (cand_ids >= 0)
            kept_mass = (torch.relu(cand_scores - delta) * selected).sum(dim=1)
            mass = (kept_mass / exact_mass.clamp(min=torch.finfo(exact_mass.dtype).tiny)).clamp(max=1.0)
            self.recall_sum = self.recall_sum + recall.sum()
            self.mass_sum = self.mass_sum + mass.sum()
            self.audited_queries += query.shape[0]
        self.audit_seconds += time.perf_counter() - start

    def merge(self, other: RetrievalStats) -> None:
        """Add ``other``'s times and sums to these (for several passes in one update)."""
        self.search_seconds += other.search_seconds
        self.add_seconds += other.add_seconds
        self.audit_seconds += other.audit_seconds
        self.audited_queries += other.audited_queries
        self.recall_sum = self.recall_sum + other.recall_sum
        self.mass_sum = self.mass_sum + other.mass_sum

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics for a log line: retrieval seconds, and recall / mass when something was audited."""
        out = {"retrieval_seconds": self.search_seconds + self.add_seconds, "audit_seconds": self.audit_seconds}
        if self.audited_queries:
            out["recall"] = float(self.recall_sum) / self.audited_queries
            out["mass_recovered"] = float(self.mass_sum) / self.audited_queries
            out["audited_queries"] = self.audited_queries
        return out


@contextmanager
def overridden(model: torch.nn.Module, **attributes: Any) -> Iterator[torch.nn.Module]:
    """Temporarily set retrieval attributes of a model (``retrieval``, ``candidate_override``, ``audit_every``).

    Example::

        >>> with overridden(model, candidate_override=exact_candidates):
        ...     exact_logits = model(x)
    """
    saved = {name: getattr(model, name) for name in attributes}
    try:
        for name, value in attributes.items():
            setattr(model, name, value)
        yield model
    finally:
        for name, value in saved.items():
            setattr(model, name, value)


def gradient_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine between two parameter gradients given as {name: tensor} (missing entries count as zero)."""
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a if n in b)
    norm_a = sum(float(g.double().pow(2).sum()) for g in a.values()) ** 0.5
    norm_b = sum(float(g.double().pow(2).sum()) for g in b.values()) ** 0.5
    return dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float("nan")



def exact_gradient_cosine(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> float:
    """Cosine between the gradient now in ``model``'s parameters and the one with exact candidates.

    Runs ``loss_fn()`` (a forward pass on the same batch) once more with ``candidate_override`` set to
    ``exact_candidates``, backpropagates it, and puts the original gradient back, so the caller's update
    is unchanged.
    """
    params = dict(model.named_parameters())
    approx = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    with overridden(model, candidate_override=exact_candidates, audit_every=0):
        loss_fn().backward()
    exact = {n: p.grad.detach() for n, p in params.items() if p.grad is not None}
    for name, p in params.items():
        p.grad = approx.get(name)
    return gradient_cosine(approx, exact)
