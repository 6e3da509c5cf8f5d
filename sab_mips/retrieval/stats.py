"""What approximate retrieval costs inside one forward pass: time in the index and audit sums.

At an audited attention step the approximate index has returned C candidates, and their scores have been
recomputed exactly. The audit asks an exact index holding the same keys for the true top-(K+1) and
records recall@K and attention mass recovered (``metrics``). Sums stay tensors during the pass (no
per-step host sync) and are read once by ``as_metrics``.

Two samples are kept apart: the *sampled* audits (every n-th attention step, an average over the whole
sequence) and the *scored* audits (every attention step that a task's metric reads, e.g. copy's 10 output
steps). The two can differ widely: a copy model reads its digits from one slot at the output steps only, so
an index that misses that slot there costs digits while the sequence-wide recall barely moves.

Shapes: B batch, C candidates per attention step, K = k_top, d key size.

Example::

    >>> stats = RetrievalStats()
    >>> stats.audit(query, exact_index, cand_ids, cand_scores, cand_weights, k=5)
    >>> stats.as_metrics()["recall"]
    0.96
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from indexes import MIPSIndex

from .metrics import best_k, mass_recovered, recall_at_k, score_scale

AUDITS_ON = "on"


@dataclass
class RetrievalStats:
    """Retrieval time and audit sums of one forward pass (or several, after ``merge``).

    ``audits`` is ``"on"`` or says why the audits were skipped.
    """

    search_seconds: float = 0.0
    add_seconds: float = 0.0
    audit_seconds: float = 0.0
    audited_queries: int = 0
    recall_sum: Any = 0.0  # a 0-d tensor during a pass
    mass_sum: Any = 0.0
    scored_queries: int = 0  # the same sums over the scored steps
    scored_recall_sum: Any = 0.0
    scored_mass_sum: Any = 0.0
    audits: str = AUDITS_ON

    def audit(self, query: torch.Tensor, exact_index: MIPSIndex, cand_ids: torch.Tensor, cand_scores: torch.Tensor,
              cand_weights: torch.Tensor, k: int, *, sampled: bool = True, scored: bool = False) -> None:
        """Compare one attention step's candidates with exact search over the same keys.

        query (B, d) the search query, detached; ``exact_index`` an ``exact`` index (``indexes.ExactIndex``)
        holding the keys the approximate index holds; cand_ids (B, C) (-1 pads), cand_scores (B, C) exact
        recomputed scores, cand_weights (B, C) the sparse weights the step used. ``sampled`` adds the step to
        the sequence-wide sums, ``scored`` to the scored steps' sums (both: to both).
        """
        start = time.perf_counter()
        with torch.no_grad():
            exact_scores, _ = exact_index.search(query, k + 1)  # (B, K+1), -inf pads
            scale = score_scale(query, exact_index.keys)
            recall = recall_at_k(best_k(cand_scores, cand_ids, k), exact_scores[:, :k], scale).sum()
            selected = (cand_weights > 0) & (cand_ids >= 0)
            mass = mass_recovered(cand_scores, selected, exact_scores.to(cand_scores.dtype), k).sum()
            if sampled:
                self.recall_sum = self.recall_sum + recall
                self.mass_sum = self.mass_sum + mass
                self.audited_queries += query.shape[0]
            if scored:
                self.scored_recall_sum = self.scored_recall_sum + recall
                self.scored_mass_sum = self.scored_mass_sum + mass
                self.scored_queries += query.shape[0]
        self.audit_seconds += time.perf_counter() - start

    def merge(self, other: RetrievalStats) -> None:
        """Add ``other``'s times and sums to these (for several passes in one update)."""
        self.search_seconds += other.search_seconds
        self.add_seconds += other.add_seconds
        self.audit_seconds += other.audit_seconds
        self.audited_queries += other.audited_queries
        self.recall_sum = self.recall_sum + other.recall_sum
        self.mass_sum = self.mass_sum + other.mass_sum
        self.scored_queries += other.scored_queries
        self.scored_recall_sum = self.scored_recall_sum + other.scored_recall_sum
        self.scored_mass_sum = self.scored_mass_sum + other.scored_mass_sum

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics for a log line: retrieval seconds, recall / mass when something was audited, and
        ``scored_recall`` / ``scored_mass_recovered`` when scored steps were."""
        out = {"retrieval_seconds": self.search_seconds + self.add_seconds, "audit_seconds": self.audit_seconds}
        if self.audited_queries:
            out["recall"] = float(self.recall_sum) / self.audited_queries
            out["mass_recovered"] = float(self.mass_sum) / self.audited_queries
            out["audited_queries"] = self.audited_queries
        if self.scored_queries:
            out["scored_recall"] = float(self.scored_recall_sum) / self.scored_queries
            out["scored_mass_recovered"] = float(self.scored_mass_sum) / self.scored_queries
            out["scored_queries"] = self.scored_queries
        return out
