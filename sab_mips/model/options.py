"""``PassOptions``: what one pass over a batch of sequences measures, records or replays.

A pass is everything a state sees, from ``SABLayer.initial_state`` to its last call (one ``run``, or the
chunks of one long sequence). Its options are fixed when the state is made: audits compare with an exact
index that must hold every key since the first step, and a replay is read by attention step from the start.

Example::

    >>> out = model.run(x, PassOptions(retrieval="faiss:HNSW32", audit_every=10, record=True))
    >>> model.run(x, PassOptions(replay=out.record.candidate_ids))   # the same pass, no search
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # eq=False: a replay tensor has no truth value
class PassOptions:
    """The options of one pass; the defaults measure and keep nothing.

    Attributes:
        retrieval: index factory string for this pass (None: the layer's ``retrieval``).
        replay: (S, B, C) candidate ids recorded by an earlier pass (``AttentionRecord.candidate_ids``),
            used instead of searching, so the pass re-computes exactly what those candidates give.
        record: keep the attention record (``SABOutput.record``).
        audit_every: compare every n-th attention step with exact search (0: never; skipped where the
            candidates are exact by construction, see ``SABLayer.audit_skip_reason``).
        audit_from: also audit every attention step at time step >= ``audit_from`` (e.g. the steps a task's
            metric reads), into the separate ``scored_*`` sums of the stats (None: none).
        collect_queries: keep the search query of every attention step.
        diagnostics: keep gap sums, slot norms and long-range attention.
        keep_candidates: keep every attention step's candidate ids on the device (what the memory-bounded
            engine replays).
        stale_keys: the index's keys may be older than the weights (a stream's memory, whose keys were
            computed when each slot was written): audit even an exact index, against a reference re-keyed
            with today's weights (``PassRecorder.rekey``).
    """

    retrieval: str | None = None
    replay: torch.Tensor | None = None
    record: bool = False
    audit_every: int = 0
    audit_from: int | None = None
    collect_queries: bool = False
    diagnostics: bool = False
    keep_candidates: bool = False
    stale_keys: bool = False

    def __post_init__(self) -> None:
        if self.audit_every < 0 or (self.audit_from is not None and self.audit_from < 0):
            raise ValueError(f"audit_every and audit_from must be >= 0, got {self.audit_every} and {self.audit_from}")

    @property
    def audits(self) -> bool:
        """Whether any attention step is to be audited."""
        return bool(self.audit_every) or self.audit_from is not None
