"""``SABState``: what SAB carries from one step to the next, and from one call to the next.

A state holds the recurrent state (h, c), the number of steps done, the slot memory and its index, and what
is being measured or recorded. ``SABLayer.forward(x, state)`` continues from it, so a sequence can be fed
in chunks: the memory persists across calls, the truncation grid and the slot schedule follow the global
step count, and the result equals one call on the whole sequence. ``detach()`` cuts the graph between
chunks (training over windows of one long stream, the memory persisting as constants).

Shapes: B batch, H hidden size, N slots, C candidates per attention step (C + R when exploring), d key size.
"""
from __future__ import annotations

import time

import torch

from indexes import MIPSIndex, make_index

from ..ops.memory import SlotMemory
from ..retrieval.stats import RetrievalStats
from .diagnostics import AttentionDiagnostics
from .record import AttentionRecord

# Kept candidate ids are stacked every KEEP_BLOCK attention steps: one small tensor per step costs ~650
# bytes of object overhead for 192 bytes of ids (B=8, C=6), 0.65 GB over a sequence of 10^6 steps.
KEEP_BLOCK = 4096


class SABState:
    """The state of one batch of sequences; made by ``SABLayer.initial_state``.

    Attributes:
        h, c: (B, H) the recurrent state after the last step (None before the first).
        t: steps done so far (the next step's global index).
        memory: the slot memory; ``index`` the index of its keys (None when the scorer scans every slot).
        stats: time in the index and audit sums, over all calls so far.
        diagnostics: attention diagnostics (when asked for), else None.
        kept_candidates: when ``keep_candidates``, every attention step's candidate ids, in blocks of
            (n, B, C) int32 (the memory-bounded engine replays them; ``take_candidates``), else None.
    """

    def __init__(self, layer, batch_size: int, device, dtype, *, retrieval: str, replay: torch.Tensor | None,
                 record: bool, audit_every: int, collect_queries: bool, diagnostics: bool, keep_candidates: bool,
                 capacity: int, audit_from: int | None = None) -> None:
        cfg = layer.config
        self.h: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.t = 0
        self.memory = SlotMemory(batch_size, cfg.hidden_size, device=device, dtype=dtype, capacity=capacity)
        self.index: MIPSIndex | None = None
        self.exact_index: MIPSIndex | None = None  # the audits' reference: the same keys, searched exactly
        self.replay = replay
        self.explore = 0  # exploration candidates per attention step; set per call (training only)
        self.projection = None  # the scorer's projections, taken once per call (parameters change between calls)
        self.stats = RetrievalStats()
        reason = "skipped: candidates replayed from a record" if replay is not None else layer.audit_skip_reason(retrieval)
        self.audit_every = audit_every if reason is None else 0
        self.audit_from = audit_from if reason is None else None
        self.stats.audits = reason or self.stats.audits
        if layer.scorer.supports_mips and layer.retrieves and replay is None:  # replayed candidates need no search
            self.index = make_index(retrieval)
            self.index.reset(batch_size, cfg.attn_dim)  # keys, e.g. W_k m_i (d_k <= H: less to scan per search)
            if self.audit_every or self.audit_from is not None:
                self.exact_index = make_index("exact")
                self.exact_index.reset(batch_size, cfg.attn_dim)
        self.attention_steps = 0
        self.record = record
        self.steps: list[int] = []
        self.candidates: list[torch.Tensor] = []
        self.selected: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.queries: list[torch.Tensor] | None = [] if collect_queries else None
        self.diagnostics = AttentionDiagnostics(cfg.k_top, cfg.k_att, cfg.k_trunc) if diagnostics else None
        self.kept_candidates: list[torch.Tensor] | None = [] if keep_candidates else None
        self._unblocked: list[torch.Tensor] = []  # kept ids not yet stacked into a block

    def take_candidates(self) -> torch.Tensor | None:
        """Every kept candidate id so far, (S, B, C) int32 (None if none were kept); the state lets go of them."""
        if self.kept_candidates is None:
            return None
        blocks = self.kept_candidates + ([torch.stack(self._unblocked)] if self._unblocked else [])
        self.kept_candidates, self._unblocked = [], []
        return torch.cat(blocks) if blocks else None

    def detach(self) -> "SABState":
        """Cut the autograd graph here: (h, c) and the memory become constants for what follows. Returns self."""
        if self.h is not None:
            self.h, self.c = self.h.detach(), self.c.detach()
        self.memory = self.memory.detached()
        return self

    def write(self, h: torch.Tensor, t: int) -> None:
        """Store ``h`` (B, H), the slot of step t, in the memory and its key in the index."""
        cached_key = self.memory.write(h, t)  # the unit key when the memory caches keys (cosine)
        if self.diagnostics is not None:
            self.diagnostics.slot(h)
        if self.index is not None:
            start = time.perf_counter()
            with torch.no_grad():  # what the index holds, e.g. k_i = W_k m_i, (B, d_k)
                key = cached_key if cached_key is not None else self.projection.key(h.detach())
            self.index.add(key.unsqueeze(1))
            self.stats.add_seconds += time.perf_counter() - start
            if self.exact_index is not None:
                self.exact_index.add(key.unsqueeze(1))

    def next_attention_step(self, t: int) -> tuple[int, bool, bool]:
        """The number of this attention step (0, 1, ...) at time step t, whether it is a sampled audit (every
        ``audit_every``-th attention step) and whether it is a scored one (t >= ``audit_from``)."""
        step = self.attention_steps
        self.attention_steps += 1
        sampled = self.audit_every > 0 and step % self.audit_every == 0
        return step, sampled, self.audit_from is not None and t >= self.audit_from

    def with_exploration(self, ids: torch.Tensor) -> torch.Tensor:
        """The searched candidates (B, C) followed by R slots drawn uniformly from the memory (B, C + R).

        A draw that repeats a candidate or an earlier draw becomes padding (-1), so no slot is counted twice;
        with N much larger than C that is rare. Draws use torch's global generator (seeded by the training
        loop and saved in its checkpoints, so a resumed run draws the same slots).
        """
        if not self.explore:
            return ids
        draws = torch.randint(0, self.memory.size, (ids.shape[0], self.explore), device=ids.device)
        repeats = (draws.unsqueeze(2) == ids.unsqueeze(1)).any(dim=2)
        repeats |= (draws.unsqueeze(2) == draws.unsqueeze(1)).tril(diagonal=-1).any(dim=2)
        return torch.cat([ids, draws.masked_fill(repeats, -1)], dim=1)

    def replayed(self, step: int, count: int) -> torch.Tensor:
        """The recorded candidate ids (B, C) of attention step ``step``."""
        if step >= self.replay.shape[0] or self.replay.shape[2] != count:
            raise ValueError(f"replay holds {tuple(self.replay.shape)} candidate ids (S, B, C); this pass needs "
                             f"C={count} at attention step {step}")
        return self.replay[step].to(device=self.memory.values_buffer.device, dtype=torch.long)

    def log(self, t: int, candidate_ids: torch.Tensor, weights: torch.Tensor, width: int) -> None:
        """Keep the ``width`` largest weights of this step (and the candidates) for the record."""
        if self.kept_candidates is not None:
            self._unblocked.append(candidate_ids.to(torch.int32))  # half the bytes; ids < 2^31
            if len(self._unblocked) == KEEP_BLOCK:
                self.kept_candidates.append(torch.stack(self._unblocked))
                self._unblocked = []
        if not self.record:
            return
        top_w, order = weights.detach().topk(min(width, weights.shape[1]), dim=1)
        ids = candidate_ids.gather(1, order).masked_fill(top_w <= 0, -1)
        self.steps.append(t)
        self.candidates.append(candidate_ids)
        self.selected.append(ids)
        self.weights.append(top_w.clamp(min=0))

    def attention_record(self) -> AttentionRecord:
        """Everything recorded so far (``record=True``)."""
        return AttentionRecord(
            steps=torch.tensor(self.steps, dtype=torch.long),
            candidate_ids=_stack_padded(self.candidates, -1, torch.long),
            slot_ids=_stack_padded(self.selected, -1, torch.long),
            weights=_stack_padded(self.weights, 0.0, torch.float32),
            slot_times=torch.tensor(self.memory.times, dtype=torch.long),
        )

    def stacked_queries(self, batch_size: int, d_k: int) -> torch.Tensor:
        """The recorded search queries (S, B, d_k) (``collect_queries=True``)."""
        if not self.queries:
            return self.memory.values_buffer.new_zeros(0, batch_size, d_k)
        return torch.stack(self.queries)


def _stack_padded(rows: list[torch.Tensor], fill: float, dtype: torch.dtype) -> torch.Tensor:
    """Stack (B, w_s) tensors of varying width w_s into (S, B, max w), padding with ``fill``."""
    if not rows:
        return torch.zeros(0, 0, 0, dtype=dtype)
    width = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), rows[0].shape[0], width), fill, dtype=dtype)
    for s, r in enumerate(rows):
        out[s, :, : r.shape[1]] = r.detach().cpu().to(dtype)
    return out
