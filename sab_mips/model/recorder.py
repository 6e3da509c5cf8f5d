"""``PassRecorder``: what one pass measures and keeps, apart from the recurrent state it measures.

Made from a pass's ``PassOptions`` by ``SABLayer.initial_state`` and carried by its ``SABState``: the index
times and audit sums (``stats``), the audits' exact index (the same keys as the searched index, searched
exactly), the replayed candidates, the attention record, the search queries, the diagnostics and the kept
candidate ids. With the default options it keeps nothing but the index times.

Shapes: B batch, S attention steps, C candidates per attention step, d key size.
"""
from __future__ import annotations

import torch

from indexes import MIPSIndex, make_index

from ..retrieval.stats import RetrievalStats
from .diagnostics import AttentionDiagnostics
from .options import PassOptions
from .record import AttentionRecord

# Kept candidate ids are stacked every KEEP_BLOCK attention steps: one small tensor per step costs ~650
# bytes of object overhead for 192 bytes of ids (B=8, C=6), 0.65 GB over a sequence of 10^6 steps.
KEEP_BLOCK = 4096


class PassRecorder:
    """The measurements and records of one pass (see the module docstring).

    Attributes:
        options: the pass's ``PassOptions``.
        stats: time in the index and the audit sums.
        exact_index: the audits' reference index (None when nothing is audited).
        diagnostics: attention diagnostics (``options.diagnostics``), else None.
    """

    def __init__(self, options: PassOptions, *, audit_skip_reason: str | None, searches: bool, batch_size: int,
                 key_size: int, k_top: int, k_att: int, k_trunc: int) -> None:
        """``audit_skip_reason``: why the pass's candidates need no audit (None: they do); ``searches``:
        whether the pass searches an index (whose keys the audits' exact index mirrors)."""
        self.options = options
        self.stats = RetrievalStats()
        reason = "skipped: candidates replayed from a record" if options.replay is not None else audit_skip_reason
        self.audit_every = options.audit_every if reason is None else 0
        self.audit_from = options.audit_from if reason is None else None
        self.stats.audits = reason or self.stats.audits
        self.exact_index: MIPSIndex | None = None
        if searches and (self.audit_every or self.audit_from is not None):
            self.exact_index = make_index("exact")
            self.exact_index.reset(batch_size, key_size)
        self.recording = options.record  # whether ``log`` keeps the record now (``record_from_now``)
        self.steps: list[int] = []
        self.candidates: list[torch.Tensor] = []
        self.selected: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.queries: list[torch.Tensor] | None = [] if options.collect_queries else None
        self.diagnostics = AttentionDiagnostics(k_top, k_att, k_trunc) if options.diagnostics else None
        self.kept: list[torch.Tensor] | None = [] if options.keep_candidates else None
        self.unblocked: list[torch.Tensor] = []  # kept ids not yet stacked into a block

    @property
    def replay(self) -> torch.Tensor | None:
        return self.options.replay

    def audits_at(self, step: int, t: int) -> tuple[bool, bool]:
        """Whether attention step ``step`` (at time step t) is a sampled audit (every ``audit_every``-th) and
        whether it is a scored one (t >= ``audit_from``)."""
        sampled = self.audit_every > 0 and step % self.audit_every == 0
        return sampled, self.audit_from is not None and t >= self.audit_from

    def key_added(self, key: torch.Tensor) -> None:
        """Mirror a key (B, 1, d) added to the searched index, for the audits."""
        if self.exact_index is not None:
            self.exact_index.add(key)

    def rekey(self, keys: torch.Tensor) -> None:
        """Replace the audits' reference keys by ``keys`` (B, N, d), e.g. every slot's key under today's
        weights: the audits then measure the searched index against exact search with those keys."""
        if self.exact_index is not None:
            self.exact_index.reset(keys.shape[0], keys.shape[2])
            if keys.shape[1]:
                self.exact_index.add(keys)

    def audit_every_step(self, every: int) -> None:
        """From now on audit every ``every``-th attention step (0: none), e.g. only in some windows of a
        stream; only where the pass's options asked for sampled audits (its reference index exists)."""
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        if every and self.exact_index is None:
            raise ValueError("this pass keeps no reference index for audits (PassOptions.audit_every was 0, or "
                             "its candidates need no audit)")
        self.audit_every = every

    def replayed(self, step: int, count: int, device) -> torch.Tensor:
        """The recorded candidate ids (B, C) of attention step ``step``."""
        replay = self.options.replay
        if step >= replay.shape[0] or replay.shape[2] != count:
            raise ValueError(f"replay holds {tuple(replay.shape)} candidate ids (S, B, C); this pass needs "
                             f"C={count} at attention step {step}")
        return replay[step].to(device=device, dtype=torch.long)

    def query(self, query: torch.Tensor) -> None:
        """Keep an attention step's search query (B, d) (``collect_queries``)."""
        if self.queries is not None:
            self.queries.append(query.detach().clone())

    def log(self, t: int, candidate_ids: torch.Tensor, weights: torch.Tensor, width: int) -> None:
        """Keep the candidates of attention step t (``keep_candidates``) and, for the record, its ``width``
        largest weights."""
        if self.kept is not None:
            self.unblocked.append(candidate_ids.to(torch.int32))  # half the bytes; ids < 2^31
            if len(self.unblocked) == KEEP_BLOCK:
                self.kept.append(torch.stack(self.unblocked))
                self.unblocked = []
        if self.recording:
            self._record(t, candidate_ids, weights, width)

    def log_steps(self, times: list[int], candidate_ids: torch.Tensor, weights: torch.Tensor, width: int) -> None:
        """``log`` for several attention steps at once: their times, candidate ids and weights (S, B, C)."""
        if self.kept is not None and len(times):
            if self.unblocked:  # keep the order: what was logged one step at a time comes first
                self.kept.append(torch.stack(self.unblocked))
                self.unblocked = []
            self.kept.append(candidate_ids.to(torch.int32))
        if self.recording:
            for s, t in enumerate(times):
                self._record(t, candidate_ids[s], weights[s], width)

    def _record(self, t: int, candidate_ids: torch.Tensor, weights: torch.Tensor, width: int) -> None:
        top_w, order = weights.detach().topk(min(width, weights.shape[1]), dim=1)
        ids = candidate_ids.gather(1, order).masked_fill(top_w <= 0, -1)
        self.steps.append(t)
        self.candidates.append(candidate_ids)
        self.selected.append(ids)
        self.weights.append(top_w.clamp(min=0))

    def record_from_now(self, on: bool) -> None:
        """Keep (or stop keeping) the attention record from the next attention step on, e.g. for a sample of
        a stream's windows (a record of every step of a long stream would grow without bound)."""
        self.recording = on

    def take_record(self, slot_times: list[int]) -> AttentionRecord:
        """The record kept so far (``attention_record``); the recorder lets go of it."""
        record = self.attention_record(slot_times)
        self.steps, self.candidates, self.selected, self.weights = [], [], [], []
        return record

    def take_candidates(self) -> torch.Tensor | None:
        """Every kept candidate id so far, (S, B, C) int32 (None if none were kept); the recorder lets go."""
        if self.kept is None:
            return None
        blocks = self.kept + ([torch.stack(self.unblocked)] if self.unblocked else [])
        self.kept, self.unblocked = [], []
        return torch.cat(blocks) if blocks else None

    def attention_record(self, slot_times: list[int]) -> AttentionRecord:
        """Everything recorded so far (``record``); ``slot_times`` the time step of each slot written."""
        return AttentionRecord(
            steps=torch.tensor(self.steps, dtype=torch.long),
            candidate_ids=stack_padded(self.candidates, -1, torch.long),
            slot_ids=stack_padded(self.selected, -1, torch.long),
            weights=stack_padded(self.weights, 0.0, torch.float32),
            slot_times=torch.tensor(slot_times, dtype=torch.long),
        )

    def stacked_queries(self, like: torch.Tensor, batch_size: int, d_k: int) -> torch.Tensor:
        """The kept search queries (S, B, d_k) (``collect_queries``); an empty one on ``like``'s device."""
        if not self.queries:
            return like.new_zeros(0, batch_size, d_k)
        return torch.stack(self.queries)


def stack_padded(rows: list[torch.Tensor], fill: float, dtype: torch.dtype) -> torch.Tensor:
    """Stack (B, w_s) tensors of varying width w_s into (S, B, max w), padding with ``fill``."""
    if not rows:
        return torch.zeros(0, 0, 0, dtype=dtype)
    width = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), rows[0].shape[0], width), fill, dtype=dtype)
    for s, r in enumerate(rows):
        out[s, :, : r.shape[1]] = r.detach().cpu().to(dtype)
    return out
