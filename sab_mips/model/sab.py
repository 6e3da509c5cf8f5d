"""The SAB-LSTM: an LSTM that attends sparsely to its own past states (SPEC §1).

Shapes: B batch, T time steps, I input size, H hidden size, N memory slots, C candidates per attention
step (``k_cand``, default K + 1), K = k_top, O output size.

One step t, in the order of the code below:

1. provisional state     (ĥ_t, c_t) = LSTMCell(x_t, (h_{t-1}, c_{t-1}))
2. retrieval             C >= K+1 candidate slots for ĥ_t from the index (a discrete choice: no gradient)
3. exact re-scoring      a_i = score(ĥ_t, m_i) for the C candidates, in the autograd graph
4. sparsifier            w = ReLU(a − δ) / (Σ ReLU(a − δ) + ε), δ the (K+1)-th score (``sparsify``)
5. summary and update    s_t = Σ_i w_i m_i,  h_t = ĥ_t + s_t,  output head on [h_t ; s_t]
6. memory write          every k_att steps h_t becomes a new slot (not detached)

The forward pass is organised around the truncation grid: segments of ``k_trunc`` steps, each starting
from a detached (h, c). Gradient reaches the past only through the slots a step selected (the K with
weight, plus the (K+1)-th through its score, which sets δ), and from each slot back along its own
segment (SPEC §1 step 6).

Retrieval with the ``dot`` scorer (SAB-MIPS, SPEC §2) goes through an index from ``indexes`` built from
the factory string ``self.retrieval`` (``config.retrieval``, default ``exact``; ``eval`` may swap it). It holds
the keys k_i = W_k m_i (d_k-wide, added as slots are written; W_k is fixed within a pass and every pass
builds a new index) and is searched with q = W_q ĥ / sqrt(d_k): scanning d_k < H numbers per slot is what
a search costs once N is large. The candidates are re-scored as q̃·m_i with q̃ = W_kᵀ q, reading the slots
m_i themselves, which is where the gradient goes. The weights depend only
on the top K+1 scores (see ``sparsify``), so with an exact index scoring C >= K+1 candidates in the graph
gives exactly the outputs and gradients of scoring every slot — which ``reference.sab_forward_reference``
does. An approximate index changes only which slots are candidates. The other scorers select by a
no-grad scan of all slots, then re-score the candidates the same way.

Measuring approximate retrieval goes through arguments of ``run``, never through state left on the module:
``retrieval=`` searches with another index for one call (``"exact"`` gives the exact twin of an
approximate pass), ``replay=`` re-uses the candidate ids recorded by an earlier pass instead of searching
(the slow twin of any index, and what a memory-bounded backward needs), and ``audit_every`` > 0 compares
every ``audit_every``-th attention step with exact search over the same keys. ``run`` returns the logits
with the attention record, the retrieval statistics and the recorded queries (``SABOutput``).

Example::

    >>> from sab_mips import SABConfig, SABLSTM
    >>> model = SABLSTM(SABConfig(input_size=3, output_size=2, hidden_size=8, k_top=2, k_att=2, k_trunc=4))
    >>> logits, record = model(torch.randn(4, 10, 3), return_attention=True)
    >>> logits.shape, record.slot_ids.shape      # (B, T, O), (S, B, K)
    (torch.Size([4, 10, 2]), torch.Size([8, 4, 2]))
    >>> out = model.run(torch.randn(4, 10, 3), retrieval="faiss:HNSW32", audit_every=1)
    >>> out.stats.as_metrics()["recall"]
    1.0
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from indexes import MIPSIndex, make_index

from ..ops.memory import SlotMemory
from ..ops.sparse_attention import AttentionSpec
from ..ops.sparsify import softmax_topk_weights, sparse_attention_weights
from ..retrieval.stats import RetrievalStats
from .config import SABConfig, check_retrieval
from .diagnostics import AttentionDiagnostics
from .inputs import check_input
from .record import AttentionRecord
from .scorers import make_scorer


@dataclass
class SABOutput:
    """What one pass of ``SABLSTM.run`` returns.

    Attributes:
        logits: (B, T, O) per-step outputs.
        record: the attention record (``record=True``), else None.
        stats: time spent in the index and the audit sums of this pass.
        queries: (S, B, d_k) the search queries of every attention step (``collect_queries=True``), else None.
        diagnostics: gap sums, slot norms and long-range attention (``diagnostics=True``), else None.
    """

    logits: torch.Tensor
    record: AttentionRecord | None
    stats: RetrievalStats
    queries: torch.Tensor | None = None
    diagnostics: AttentionDiagnostics | None = None


class _ForwardState:
    """Everything one forward pass accumulates: the memory, the index, and what is being recorded."""

    def __init__(self, model: "SABLSTM", x: torch.Tensor, retrieval: str, replay: torch.Tensor | None,
                 record: bool, audit_every: int, collect_queries: bool, diagnostics: bool) -> None:
        cfg = model.config
        B, T, H = x.shape[0], x.shape[1], cfg.hidden_size
        # the whole pass's slots fit from the start: no buffer regrowth (and its copies) along the sequence
        self.memory = SlotMemory(B, H, device=x.device, dtype=x.dtype, capacity=max(1, T // cfg.k_att))
        self.index: MIPSIndex | None = None
        self.exact_index: MIPSIndex | None = None  # the audits' reference: the same keys, searched exactly
        self.replay = replay
        # exploration candidates: R slots drawn at random, in training only (``SABConfig.explore``)
        self.explore = cfg.explore if model.training and model.retrieves else 0
        self.stats = RetrievalStats()
        reason = model.audit_skip_reason(retrieval)
        if replay is not None:
            reason = "skipped: candidates replayed from a record"
        self.audit_every = audit_every if reason is None else 0
        self.stats.audits = reason or self.stats.audits
        # MIPS-servable scorers: the pass's projections (query, key, exact candidate scores), taken once
        self.projection = model.scorer.projection() if model.scorer.supports_mips else None
        if self.projection is not None and model.retrieves:
            self.index = make_index(retrieval)
            self.index.reset(B, model.config.attn_dim)  # keys W_k m_i (d_k <= H: less to scan per search)
            if self.audit_every:
                self.exact_index = make_index("exact")
                self.exact_index.reset(B, model.config.attn_dim)
        self.attention_steps = 0
        self.record = record
        self.steps: list[int] = []
        self.candidates: list[torch.Tensor] = []
        self.selected: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.queries: list[torch.Tensor] | None = [] if collect_queries else None
        self.diagnostics = AttentionDiagnostics(cfg.k_top, cfg.k_att, cfg.k_trunc) if diagnostics else None
        self.logits: torch.Tensor | None = None

    def write(self, h: torch.Tensor, t: int) -> None:
        self.memory.write(h, t)
        if self.diagnostics is not None:
            self.diagnostics.slot(h)
        if self.index is not None:
            start = time.perf_counter()
            with torch.no_grad():
                key = self.projection.key(h.detach())  # what the index holds, e.g. k_i = W_k m_i, (B, d_k)
            self.index.add(key.unsqueeze(1))
            self.stats.add_seconds += time.perf_counter() - start
            if self.exact_index is not None:
                self.exact_index.add(key.unsqueeze(1))

    def next_attention_step(self) -> tuple[int, bool]:
        """The number of this attention step (0, 1, ...) and whether it is audited (every ``audit_every``-th)."""
        step = self.attention_steps
        self.attention_steps += 1
        return step, self.audit_every > 0 and step % self.audit_every == 0

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
        return self.replay[step].to(self.memory.values_buffer.device)

    def log(self, t: int, candidate_ids: torch.Tensor, weights: torch.Tensor, width: int) -> None:
        """Keep the ``width`` largest weights of this step (and the candidates) for the record."""
        if not self.record:
            return
        top_w, order = weights.detach().topk(min(width, weights.shape[1]), dim=1)
        ids = candidate_ids.gather(1, order).masked_fill(top_w <= 0, -1)
        self.steps.append(t)
        self.candidates.append(candidate_ids)
        self.selected.append(ids)
        self.weights.append(top_w.clamp(min=0))

    def attention_record(self) -> AttentionRecord:
        return AttentionRecord(
            steps=torch.tensor(self.steps, dtype=torch.long),
            candidate_ids=_stack_padded(self.candidates, -1, torch.long),
            slot_ids=_stack_padded(self.selected, -1, torch.long),
            weights=_stack_padded(self.weights, 0.0, torch.float32),
            slot_times=torch.tensor(self.memory.times, dtype=torch.long),
        )


def _stack_padded(rows: list[torch.Tensor], fill: float, dtype: torch.dtype) -> torch.Tensor:
    """Stack (B, w_s) tensors of varying width w_s into (S, B, max w), padding with ``fill``."""
    if not rows:
        return torch.zeros(0, 0, 0, dtype=dtype)
    width = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), rows[0].shape[0], width), fill, dtype=dtype)
    for s, r in enumerate(rows):
        out[s, :, : r.shape[1]] = r.detach().cpu().to(dtype)
    return out


def add_forget_bias(bias_ih: torch.Tensor, value: float) -> None:
    """Add ``value`` to the forget-gate quarter of an LSTM's input bias (gate order i, f, g, o), in place."""
    if value:
        H = bias_ih.shape[0] // 4
        with torch.no_grad():
            bias_ih[H : 2 * H] += value


def _lstm_step(input_gates: torch.Tensor, h: torch.Tensor, c: torch.Tensor, recurrent_weight: torch.Tensor):
    """One LSTM step given the input half of the gates (B, 4H); the same maths as ``nn.LSTMCell``.

    Gate order i, f, g, o as in torch; one sigmoid over all gates is cheaper than three small ones.
    """
    gates = torch.addmm(input_gates, h, recurrent_weight)  # (B, 4H)
    H = h.shape[1]
    i, f, _, o = gates.sigmoid().chunk(4, dim=1)
    g = gates[:, 2 * H : 3 * H].tanh()
    c = f * c + i * g
    return o * c.tanh(), c


class SABLSTM(nn.Module):
    """LSTM with Sparse Attentive Backtracking. See the module docstring for the algorithm."""

    retrieves = True  # attention steps ask an index for candidates (the dense baseline reads every slot)

    def __init__(self, config: SABConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        H = config.hidden_size
        self.cell = nn.LSTMCell(config.input_size, H, **factory)
        self.scorer = make_scorer(config.scorer, H, config.attn_dim, config.temperature, **factory)
        self.head = nn.Linear(2 * H, config.output_size, **factory)  # reads [h_t ; s_t]
        self.retrieval = config.retrieval  # index factory string; ``set_retrieval`` changes it after training
        add_forget_bias(self.cell.bias_ih, config.forget_bias)
        # One fused autograd node per attention step (``ops.sparse_attention``) where the scorer has one;
        # False runs the plain autograd path, its slow twin (the tests compare the two).
        self.use_fused = self.scorer.supports_mips
        self.attention_spec = AttentionSpec(config.scorer, config.sparsifier, config.k_top, config.eps)
        self.exploring_spec = AttentionSpec(config.scorer, config.sparsifier, config.k_top, config.eps, config.explore)

    def set_retrieval(self, retrieval: str) -> None:
        """Search with another index from now on (e.g. a larger efSearch, or ``exact``, for evaluation).

        Indexes are rebuilt in every forward pass, so any factory string valid for the scorer is accepted.
        """
        check_retrieval(retrieval, self.config.scorer)
        self.retrieval = retrieval

    def audit_skip_reason(self, retrieval: str | None = None) -> str | None:
        """Why retrieval audits cannot run with ``retrieval`` (default: the model's), or None when they can.

        Exact candidates need no audit: their recall, attention mass and gradient cosine are 1 by construction.
        """
        retrieval = self.retrieval if retrieval is None else retrieval
        if not self.retrieves:
            return "skipped: no retrieval, every slot is read (exact)"
        if not self.scorer.supports_mips:
            return f"skipped: scorer {self.config.scorer!r} scans every slot (exact)"
        if make_index(retrieval).exact:
            return f"skipped: retrieval {retrieval!r} is exact (recall 1 and gradient cosine 1 by construction)"
        return None

    def extra_repr(self) -> str:
        c = self.config
        return (f"preset={c.preset!r}, k_top={c.k_top}, k_att={c.k_att}, attend_every={c.attend_every}, "
                f"k_trunc={c.k_trunc}, scorer={c.scorer!r}, sparsifier={c.sparsifier!r}, slot_value={c.slot_value!r}, "
                f"forget_bias={c.forget_bias}, explore={c.explore}, retrieval={self.retrieval!r}, k_cand={c.candidates}, "
                f"attention={self.attention_path()!r}")

    def attention_path(self) -> str:
        """How an attention step runs: ``fused`` (one autograd node) or ``plain`` (autograd op by op), and why."""
        if self.use_fused:
            return "fused"
        if not self.scorer.supports_mips:
            return f"plain (scorer {self.config.scorer!r} has no fused step)"
        return "plain (use_fused=False)"

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        add_forget_bias(self.cell.bias_ih, self.config.forget_bias)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Per-step logits (B, T, O) for inputs x (B, T, I); with ``return_attention`` also the record."""
        out = self.run(x, record=return_attention)
        return (out.logits, out.record) if return_attention else out.logits

    def run(self, x: torch.Tensor, *, retrieval: str | None = None, replay: torch.Tensor | None = None,
            record: bool = False, audit_every: int = 0, collect_queries: bool = False,
            diagnostics: bool = False) -> SABOutput:
        """One pass over inputs x (B, T, I), with everything it can measure.

        Args:
            retrieval: index factory string for this call only (default: ``self.retrieval``).
            replay: (S, B, C) candidate ids recorded by an earlier pass (``AttentionRecord.candidate_ids``);
                used instead of searching, so the pass re-computes exactly what those candidates give.
            record: return the attention record.
            audit_every: compare every n-th attention step with exact search (0: never; skipped when the
                candidates are exact by construction, see ``audit_skip_reason``).
            collect_queries: return the search query of every attention step.
            diagnostics: return the pass's gap sums, slot norms and long-range attention (``diagnostics``).
        """
        if not self.retrieves and (retrieval is not None or replay is not None or audit_every):
            raise ValueError(f"{type(self).__name__} reads every slot: retrieval, replay and audit_every do not apply")
        if retrieval is not None:
            check_retrieval(retrieval, self.config.scorer)
        state = self._run(x, self.retrieval if retrieval is None else retrieval, replay, record, audit_every,
                          collect_queries, diagnostics)
        queries = None
        if collect_queries:
            d_k = self.config.attn_dim
            queries = torch.stack(state.queries) if state.queries else x.new_zeros(0, x.shape[0], d_k)
        return SABOutput(state.logits, state.attention_record() if record else None, state.stats, queries,
                         state.diagnostics)

    @torch.no_grad()
    def collect_memories(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the index held and was asked on inputs x (B, T, I): the MIPS problem of this model.

        Returns ``keys`` (B, N, d_k), the keys the index held (dot: k_i = W_k m_i), and ``queries``
        (S, B, d_k), what it was searched with (dot: q = W_q ĥ / sqrt(d_k)), one per attention step. Needs a
        scorer an index can serve (dot, cosine).
        """
        if not self.scorer.supports_mips:
            raise ValueError(f"collect_memories needs the dot or cosine scorer, not {self.config.scorer!r}")
        state = self._run(x, self.retrieval, None, False, 0, collect_queries=True, diagnostics=False)
        d_k = self.config.attn_dim
        queries = torch.stack(state.queries) if state.queries else x.new_zeros(0, x.shape[0], d_k)
        return {"keys": state.projection.key(state.memory.values()), "queries": queries}

    def _segment_length(self, T: int) -> int:
        return self.config.k_trunc

    def _run(self, x: torch.Tensor, retrieval: str, replay: torch.Tensor | None, record: bool, audit_every: int,
             collect_queries: bool, diagnostics: bool) -> _ForwardState:
        check_input(self, x, self.config.input_size)
        cfg = self.config
        B, T, _ = x.shape
        state = _ForwardState(self, x, retrieval, replay, record, audit_every, collect_queries, diagnostics)
        stores_h_hat = cfg.slot_value == "h_hat"
        # The input half of every step's gates in one matmul, outside the time loop.
        cell = self.cell
        input_gates = nn.functional.linear(x, cell.weight_ih, cell.bias_ih + cell.bias_hh)  # (B, T, 4H)
        # unbind, not input_gates[:, t]: the backward of T separate selects would build T zero-filled
        # (B, T, 4H) gradients, O(T²) work; unbind's backward stacks the T step gradients once.
        input_gates = input_gates.unbind(dim=1)
        recurrent_weight = cell.weight_hh.t()  # (H, 4H)
        h = c = no_summary = x.new_zeros(B, cfg.hidden_size)
        hs: list[torch.Tensor] = []
        ss: list[torch.Tensor] = []
        segment = self._segment_length(T)
        for start in range(0, T, segment):
            h, c = h.detach(), c.detach()  # the truncation boundary
            for t in range(start, min(start + segment, T)):
                h_hat, c = _lstm_step(input_gates[t], h, c, recurrent_weight)
                h, s = h_hat, no_summary
                if t % cfg.attend_every == 0 and state.memory.size > 0:
                    s = self._attend(h_hat, state, t)
                    h = h_hat + s
                hs.append(h)
                ss.append(s)
                if (t + 1) % cfg.k_att == 0:
                    state.write(h_hat if stores_h_hat else h, t)
        features = torch.cat([torch.stack(hs, dim=1), torch.stack(ss, dim=1)], dim=2)  # (B, T, 2H)
        state.logits = self.head(features)
        return state

    def _attend(self, h_hat: torch.Tensor, state: _ForwardState, t: int) -> torch.Tensor:
        """Sparse summary s_t (B, H) of the memory for provisional states ĥ_t (B, H)."""
        k, eps = self.config.k_top, self.config.eps
        count, explore = self.config.candidates, state.explore
        step, audited = state.next_attention_step()
        ids, query = self._retrieve(h_hat, state, count, step)  # ids (B, C), or (B, C + R) when exploring
        # No padding among the candidates (an exact search over at least C slots never pads; other searches
        # are checked): skip the masks. Every backend then takes the same path, so equal candidates give
        # bit-identical results.
        exact_search = state.replay is None and (state.index is None or state.index.exact) and not explore
        full = state.memory.size >= count and (exact_search or bool((ids >= 0).all()))
        spec = self.exploring_spec if explore else self.attention_spec
        if query is not None and self.use_fused:
            query_in, key_weight = state.projection.fused_inputs(query)
            summary, weights, scores = state.memory.attend(ids, query_in, key_weight, None if full else ids >= 0, spec)
        else:
            slots = state.memory.read(ids)  # (B, C, H), in the graph
            scores = self._score(h_hat, state, query, slots)  # (B, C), in the graph
            if self.config.sparsifier == "softmax":
                weights = softmax_topk_weights(scores, k, valid=None if full else ids >= 0, explore=explore)
            elif full:
                weights = sparse_attention_weights(scores, k, eps, all_valid=True)
            else:
                weights = sparse_attention_weights(scores, k, eps, valid=ids >= 0)
            summary = (weights.unsqueeze(2) * slots).sum(dim=1)  # s_t; cheaper than bmm for C = K+1 rows
        if state.diagnostics is not None:
            state.diagnostics.attention(t, ids, scores.detach(), weights.detach())
        if audited:  # the searched candidates only (exploration candidates are random by design)
            searched = ids.shape[1] - explore
            state.stats.audit(query.detach(), state.exact_index, ids[:, :searched], scores.detach()[:, :searched],
                              weights.detach()[:, :searched], k)
        state.log(t, ids, weights, k)
        return summary

    def _retrieve(self, h_hat: torch.Tensor, state: _ForwardState, count: int, step: int):
        """Candidate slot ids (B, count), -1 padded, and the search query (B, d_k) in the graph (None for
        scorers that no index can serve)."""
        if state.index is not None:
            query = state.projection.query(h_hat)  # what the index is searched with; re-scores the candidates
            if state.queries is not None:
                state.queries.append(query.detach().clone())
            if state.replay is not None:
                return state.replayed(step, count + state.explore), query
            start = time.perf_counter()
            _, ids = state.index.search(query.detach(), count)
            # The index checked this pass's first keys and query for NaN/Inf; checking every call would read
            # every value again (and sync with a GPU) at each step: inputs are validated once per pass.
            state.index.trust_inputs()
            # One canonical order (newest slot first, padding last) for every backend: an approximate index
            # that returns the exact candidate set then gives bit-identical results to exact search, so a
            # difference between runs measures missed candidates and not summation order.
            ids = ids.sort(dim=1, descending=True).values
            state.stats.search_seconds += time.perf_counter() - start
            return state.with_exploration(ids), query
        if state.replay is not None:
            return state.replayed(step, count + state.explore), None
        with torch.no_grad():
            scores = self.scorer(h_hat, state.memory.values())  # (B, N)
            top = scores.topk(min(count, state.memory.size), dim=1).indices
        if top.shape[1] < count:
            top = torch.cat([top, top.new_full((top.shape[0], count - top.shape[1]), -1)], dim=1)
        return state.with_exploration(top), None

    def _score(self, h_hat: torch.Tensor, state: _ForwardState, query: torch.Tensor | None,
               slots: torch.Tensor) -> torch.Tensor:
        """Exact scores (B, C) of candidate slots (B, C, H), in the graph."""
        if query is not None:
            return state.projection.scores(query, slots)
        return self.scorer(h_hat, slots)


class DenseAttentionLSTM(SABLSTM):
    """Baseline: the same LSTM and memory, dense softmax attention over every slot, full BPTT."""

    retrieves = False

    def extra_repr(self) -> str:
        c = self.config
        return f"k_att={c.k_att}, attend_every={c.attend_every}, scorer={c.scorer!r}"

    def _segment_length(self, T: int) -> int:
        return T  # no truncation: full gradients

    def _attend(self, h_hat: torch.Tensor, state: _ForwardState, t: int) -> torch.Tensor:
        B, N = h_hat.shape[0], state.memory.size
        ids = torch.arange(N, device=h_hat.device).expand(B, N)
        slots = state.memory.read(ids)  # (B, N, H)
        query = state.projection.query(h_hat) if state.projection is not None else None
        weights = torch.softmax(self._score(h_hat, state, query, slots), dim=1)  # (B, N)
        state.log(t, ids, weights, N)
        return torch.bmm(weights.unsqueeze(1), slots).squeeze(1)
