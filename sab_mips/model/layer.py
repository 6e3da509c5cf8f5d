"""``SABLayer``: SAB as a recurrent layer in the ``nn.LSTM`` convention, per-step features and a state.

    features, state = layer(x)            # x (B, T, I) -> features (B, T, 2H) = [h_t ; s_t], and the state
    features, state = layer(x2, state)    # the same sequence continued: memory, index and (h, c) persist

One step t, in the order of the code below:

1. provisional state     (ĥ_t, c_t) = LSTMCell(x_t, (h_{t-1}, c_{t-1}))
2. retrieval             C >= K+1 candidate slots for ĥ_t from the index (a discrete choice: no gradient)
3. exact re-scoring      a_i = score(ĥ_t, m_i) for the C candidates, in the autograd graph
4. sparsifier            w = ReLU(a − δ) / (Σ ReLU(a − δ) + ε), δ the (K+1)-th score (``sparsify``), or the
                         top-K softmax of the recommended preset
5. summary and update    s_t = Σ_i w_i m_i,  h_t = ĥ_t + s_t (or h_t = ĥ_t: ``summary_to_state`` false)
6. memory write          every k_att steps h_t (or ĥ_t, ``slot_value``) becomes a new slot (not detached)

The recurrent chain (h, c) is detached at every step t with t % k_trunc == 0 (global step count: chunks
of a sequence fed one after another cut at the same places as the whole sequence). Gradient reaches the
past only through the slots a step selected (the K with weight, plus, for the paper's sparsifier, the
(K+1)-th through its score, which sets δ), and from each slot back along its own segment (step 6 above).

Retrieval with a MIPS-servable scorer (``dot``, ``cosine``; SAB-MIPS) goes through an index from
``indexes`` built from the factory string ``self.retrieval``. It holds the keys (dot: k_i = W_k m_i, d_k-wide)
and is searched with the query (dot: q = W_q ĥ / sqrt(d_k)): scanning d_k < H numbers per slot is what a
search costs once N is large. The candidates are re-scored exactly from the slots m_i themselves, which is
where the gradient goes. The weights depend only on the top K+1 scores, so with an exact index scoring
C >= K+1 candidates in the graph gives exactly the outputs and gradients of scoring every slot — which
``reference.sab_forward_reference`` does. An approximate index changes only which slots are candidates. The
other scorers select by a no-grad scan of all slots, then re-score the candidates the same way.

What a pass measures or replays is fixed when its state is made (``initial_state``): ``retrieval=`` searches
with another index, ``replay=`` re-uses recorded candidate ids instead of searching (the slow twin of any
index, and what the memory-bounded engine needs), ``audit_every`` compares every n-th attention step with
exact search and ``audit_from`` every step from a time step on (the steps a metric reads), ``record``,
``collect_queries`` and ``diagnostics`` keep what they say.

Shapes: B batch, T time steps, I input size, H hidden size, N memory slots, C candidates per attention step
(``k_cand``, default K + 1), K = k_top.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from indexes import make_index

from ..ops.sparse_attention import AttentionSpec
from ..ops.sparsify import softmax_topk_weights, sparse_attention_weights
from .config import SABConfig, check_retrieval
from .inputs import check_input
from .lstm_init import init_gate_biases
from .scorers import make_scorer
from .state import SABState


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


class SABLayer(nn.Module):
    """An LSTM layer with Sparse Attentive Backtracking. See the module docstring for the algorithm.

    Example::

        >>> layer = SABLayer(SABConfig(input_size=3, hidden_size=8, k_top=2, k_att=2, k_trunc=4))
        >>> features, state = layer(torch.randn(4, 10, 3))
        >>> features.shape, state.t, state.memory.size          # (B, T, 2H), steps done, slots written
        (torch.Size([4, 10, 16]), 10, 5)
        >>> more, state = layer(torch.randn(4, 6, 3), state)    # the same sequences, 6 more steps
    """

    retrieves = True  # attention steps ask an index for candidates (the dense baseline reads every slot)

    def __init__(self, config: SABConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        H = config.hidden_size
        self.cell = nn.LSTMCell(config.input_size, H, **factory)
        self.scorer = make_scorer(config.scorer, H, config.attn_dim, config.temperature, **factory)
        self.retrieval = config.retrieval  # index factory string; ``set_retrieval`` changes it after training
        init_gate_biases(self.cell.bias_ih, self.cell.bias_hh, config.forget_bias, config.chrono)
        # One fused autograd node per attention step (``ops.sparse_attention``) where the scorer has one;
        # False runs the plain autograd path, its slow twin (the tests compare the two).
        self.use_fused = self.scorer.supports_mips
        self.attention_spec = AttentionSpec(config.scorer, config.sparsifier, config.k_top, config.eps)
        self.exploring_spec = AttentionSpec(config.scorer, config.sparsifier, config.k_top, config.eps, config.explore)

    @property
    def caches_keys(self) -> bool:
        """Whether the memory keeps each slot's unit key (fused cosine steps; ``ops.memory``, key cache)."""
        return self.retrieves and self.use_fused and self.config.scorer == "cosine"

    @property
    def output_size(self) -> int:
        """Features per step: [h_t ; s_t], 2H."""
        return 2 * self.config.hidden_size

    def set_retrieval(self, retrieval: str) -> None:
        """Search with another index from now on (e.g. a larger efSearch, or ``exact``, for evaluation).

        Indexes are rebuilt for every new state, so any factory string valid for the scorer is accepted.
        """
        check_retrieval(retrieval, self.config.scorer)
        self.retrieval = retrieval

    def audit_skip_reason(self, retrieval: str | None = None) -> str | None:
        """Why retrieval audits cannot run with ``retrieval`` (default: the layer's), or None when they can.

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
                f"forget_bias={c.forget_bias}, chrono={c.chrono}, explore={c.explore}, retrieval={self.retrieval!r}, k_cand={c.candidates}, "
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
        init_gate_biases(self.cell.bias_ih, self.cell.bias_hh, self.config.forget_bias, self.config.chrono)

    # ---- state and forward ------------------------------------------------------------------------
    def initial_state(self, batch_size: int, *, device=None, dtype=None, retrieval: str | None = None,
                      replay: torch.Tensor | None = None, record: bool = False, audit_every: int = 0,
                      collect_queries: bool = False, diagnostics: bool = False, keep_candidates: bool = False,
                      steps: int | None = None, audit_from: int | None = None) -> SABState:
        """A fresh state for ``batch_size`` sequences: nothing done yet, an empty memory.

        Args:
            retrieval: index factory string for this state (default: ``self.retrieval``).
            replay: (S, B, C) candidate ids recorded by an earlier pass (``AttentionRecord.candidate_ids``);
                used instead of searching, so the pass re-computes exactly what those candidates give.
            record: keep the attention record (``state.attention_record()``).
            audit_every: compare every n-th attention step with exact search (0: never; skipped when the
                candidates are exact by construction, see ``audit_skip_reason``).
            collect_queries: keep the search query of every attention step.
            diagnostics: keep gap sums, slot norms and long-range attention (``state.diagnostics``).
            keep_candidates: keep every attention step's candidate ids on the device (for replay).
            steps: the sequence length if known: the slot buffer is then allocated once.
            audit_from: also audit every attention step at time step >= ``audit_from`` (e.g. the steps a task's
                metric reads), into the separate ``scored_*`` sums of ``state.stats`` (None: none).
        """
        audits = audit_every or audit_from is not None
        if not self.retrieves and (retrieval is not None or replay is not None or audits):
            raise ValueError(f"{type(self).__name__} reads every slot: retrieval, replay and audits do not apply")
        if audit_every < 0 or (audit_from is not None and audit_from < 0):
            raise ValueError(f"audit_every and audit_from must be >= 0, got {audit_every} and {audit_from}")
        if retrieval is not None:
            check_retrieval(retrieval, self.config.scorer)
        weight = self.cell.weight_ih
        capacity = max(1, steps // self.config.k_att) if steps else 16
        return SABState(self, batch_size, weight.device if device is None else device,
                        weight.dtype if dtype is None else dtype, retrieval=retrieval or self.retrieval,
                        replay=replay, record=record, audit_every=audit_every, collect_queries=collect_queries,
                        diagnostics=diagnostics, keep_candidates=keep_candidates, capacity=capacity,
                        audit_from=audit_from)

    def forward(self, x: torch.Tensor, state: SABState | None = None) -> tuple[torch.Tensor, SABState]:
        """Per-step features (B, T, 2H) = [h_t ; s_t] for inputs x (B, T, I), continuing ``state`` (None: a
        fresh one); returns the features and the state after the last step."""
        check_input(self, x, self.config.input_size)
        cfg = self.config
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B, device=x.device, dtype=x.dtype, steps=T)
        state.projection = self.scorer.projection() if self.scorer.supports_mips else None
        if self.caches_keys:
            state.memory.cache_keys(state.projection.key_weight)  # ``ops.memory``: keys projected once per slot
        state.explore = cfg.explore if self.training and self.retrieves else 0
        stores_h_hat, to_state = cfg.slot_value == "h_hat", cfg.summary_to_state
        # The input half of every step's gates in one matmul, outside the time loop.
        cell = self.cell
        # Time-major (T, B, 4H), so that each step's (B, 4H) slice is contiguous for its addmm.
        input_gates = nn.functional.linear(x.transpose(0, 1), cell.weight_ih, cell.bias_ih + cell.bias_hh)
        # unbind, not input_gates[t]: the backward of T separate selects would build T zero-filled
        # (T, B, 4H) gradients, O(T²) work; unbind's backward stacks the T step gradients once.
        input_gates = input_gates.unbind(dim=0)
        recurrent_weight = cell.weight_hh.t()  # (H, 4H)
        no_summary = x.new_zeros(B, cfg.hidden_size)
        h, c = (no_summary, no_summary) if state.h is None else (state.h, state.c)
        hs: list[torch.Tensor] = []
        ss: list[torch.Tensor] = []
        for i in range(T):
            t = state.t + i
            if self.truncates(t):
                h, c = h.detach(), c.detach()  # the truncation boundary
            h_hat, c = _lstm_step(input_gates[i], h, c, recurrent_weight)
            h, s = h_hat, no_summary
            if t % cfg.attend_every == 0 and state.memory.size > 0:
                s = self._attend(h_hat, state, t)
                h = h_hat + s if to_state else h_hat
            hs.append(h)
            ss.append(s)
            if (t + 1) % cfg.k_att == 0:
                state.write(h_hat if stores_h_hat else h, t)
        state.h, state.c, state.t = h, c, state.t + T
        # one stack of h_0, s_0, h_1, s_1, ... viewed as (B, T, 2H) = [h_t ; s_t]: one copy instead of three
        features = torch.stack([v for pair in zip(hs, ss) for v in pair], dim=1).view(B, T, 2 * cfg.hidden_size)
        return features, state

    def truncates(self, t: int) -> bool:
        """Whether the chain (h, c) is cut before step t."""
        return t % self.config.k_trunc == 0

    def _attend(self, h_hat: torch.Tensor, state: SABState, t: int) -> torch.Tensor:
        """Sparse summary s_t (B, H) of the memory for provisional states ĥ_t (B, H)."""
        k, eps = self.config.k_top, self.config.eps
        count, explore = self.config.candidates, state.explore
        step, sampled, scored = state.next_attention_step(t)
        ids, query = self._retrieve(h_hat, state, count, step)  # ids (B, C), or (B, C + R) when exploring
        # No padding among the candidates (an exact search over at least C slots never pads; other searches
        # are checked): skip the masks. Every backend then takes the same path, so equal candidates give
        # bit-identical results.
        exact_search = state.replay is None and (state.index is None or state.index.exact) and not explore
        # (state.index is None here means a scorer that scans every slot: an exact search too)
        full = state.memory.size >= count and (exact_search or bool((ids >= 0).all()))
        spec = self.exploring_spec if explore else self.attention_spec
        if query is not None and self.use_fused:
            query_in, key_weight = state.projection.fused_inputs(query)
            summary, weights, scores = state.memory.attend(ids, query_in, key_weight, None if full else ids >= 0, spec)
        else:
            slots = state.memory.read(ids)  # (B, C, H), in the graph
            scores = self._score(h_hat, state, query, slots)  # (B, C), in the graph
            if self.config.sparsifier == "softmax":
                weights = softmax_topk_weights(scores, k, valid=None if full else ids >= 0, explore=explore,
                                               all_valid=full)
            elif full:
                weights = sparse_attention_weights(scores, k, eps, all_valid=True)
            else:
                weights = sparse_attention_weights(scores, k, eps, valid=ids >= 0)
            summary = (weights.unsqueeze(2) * slots).sum(dim=1)  # s_t; cheaper than bmm for C = K+1 rows
        if state.diagnostics is not None:
            state.diagnostics.attention(t, ids, scores, weights)
        if sampled or scored:  # the searched candidates only (exploration candidates are random by design)
            searched = ids.shape[1] - explore
            state.stats.audit(query.detach(), state.exact_index, ids[:, :searched], scores.detach()[:, :searched],
                              weights.detach()[:, :searched], k, sampled=sampled, scored=scored)
        state.log(t, ids, weights, k)
        return summary

    def _retrieve(self, h_hat: torch.Tensor, state: SABState, count: int, step: int):
        """Candidate slot ids (B, count), -1 padded (then the exploration candidates), and the search query
        (B, d_k) in the graph (None for scorers that no index can serve)."""
        if state.projection is not None:
            query = state.projection.query(h_hat)  # what the index is searched with; re-scores the candidates
            if state.queries is not None:
                state.queries.append(query.detach().clone())
            if state.replay is not None:
                return state.replayed(step, count + state.explore), query
            start = time.perf_counter()
            _, ids = state.index.search(query.detach(), count)
            # The index checked this state's first keys and query for NaN/Inf; checking every call would read
            # every value again (and sync with a GPU) at each step: inputs are validated once per state.
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

    def _score(self, h_hat: torch.Tensor, state: SABState, query: torch.Tensor | None,
               slots: torch.Tensor) -> torch.Tensor:
        """Exact scores (B, C) of candidate slots (B, C, H), in the graph."""
        if query is not None:
            return state.projection.scores(query, slots)
        return self.scorer(h_hat, slots)


class DenseAttentionLayer(SABLayer):
    """Baseline: the same LSTM and memory, dense softmax attention over every slot, no truncation."""

    retrieves = False

    def extra_repr(self) -> str:
        c = self.config
        return f"k_att={c.k_att}, attend_every={c.attend_every}, scorer={c.scorer!r}"

    def truncates(self, t: int) -> bool:
        return False  # full gradients

    def _attend(self, h_hat: torch.Tensor, state: SABState, t: int) -> torch.Tensor:
        B, N = h_hat.shape[0], state.memory.size
        ids = torch.arange(N, device=h_hat.device).expand(B, N)
        slots = state.memory.read(ids)  # (B, N, H)
        query = state.projection.query(h_hat) if state.projection is not None else None
        weights = torch.softmax(self._score(h_hat, state, query, slots), dim=1)  # (B, N)
        state.log(t, ids, weights, N)
        return torch.bmm(weights.unsqueeze(1), slots).squeeze(1)
