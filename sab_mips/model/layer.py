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
C >= K+1 candidates in the graph gives exactly the outputs and gradients of scoring every slot — which the
slow twin ``sab_forward_reference`` (tests/reference_models.py) does. An approximate index changes only which
slots are candidates. The other scorers select by a no-grad scan of all slots, then re-score the candidates
the same way.

What a pass measures or replays is fixed when its state is made (``initial_state(B, PassOptions(...))``,
``options``): ``retrieval`` searches with another index, ``replay`` re-uses recorded candidate ids instead of
searching (the slow twin of any index, and what the memory-bounded engine needs), ``audit_every`` compares
every n-th attention step with exact search and ``audit_from`` every step from a time step on (the steps a
metric reads), ``record``, ``collect_queries`` and ``diagnostics`` keep what they say; the state's
``recorder`` holds it all (``recorder``).

Shapes: B batch, T time steps, I input size, H hidden size, N memory slots, C candidates per attention step
(``k_cand``, default K + 1), K = k_top.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from indexes import make_index

from ..ops.memory import SlotMemory
from ..ops.projection import input_projection
from ..ops.sparse_attention import AttentionSpec
from ..ops.sparsify import softmax_topk_weights, sparse_attention_weights
from .config import SABConfig, check_retrieval
from .inputs import check_input
from .lstm_init import init_gate_biases
from .compiled_path import check_kernel, compiled_forward, runs_compiled
from .scorers import make_scorer
from .options import PassOptions
from .recorder import PassRecorder
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
        # Where the steps run (``compiled_path``): "auto" the compiled C++ recurrence where it builds and covers
        # the pass, else Python; "python" always the step-by-step Python loop (the reference); "compiled" the
        # C++ recurrence or an error. ``set_kernel`` changes it.
        self.kernel = "auto"
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

    def set_kernel(self, kernel: str) -> None:
        """Run the steps on ``"auto"``, ``"python"`` or ``"compiled"`` (``compiled_path``)."""
        check_kernel(kernel)
        self.kernel = kernel

    def audit_skip_reason(self, retrieval: str | None = None, stale_keys: bool = False) -> str | None:
        """Why retrieval audits cannot run with ``retrieval`` (default: the layer's), or None when they can.

        Exact candidates need no audit: their recall, attention mass and gradient cosine are 1 by construction
        — unless the index's keys may be older than the weights (``stale_keys``, a stream's memory).
        """
        retrieval = self.retrieval if retrieval is None else retrieval
        if not self.retrieves:
            return "skipped: no retrieval, every slot is read (exact)"
        if not self.scorer.supports_mips:
            return f"skipped: scorer {self.config.scorer!r} scans every slot (exact)"
        if make_index(retrieval).exact and not stale_keys:
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
    def initial_state(self, batch_size: int, options: PassOptions | None = None, *, device=None, dtype=None,
                      steps: int | None = None) -> SABState:
        """A fresh state for ``batch_size`` sequences: nothing done yet, an empty memory.

        Args:
            options: what the pass measures, records or replays (``PassOptions``; None: nothing).
            steps: the sequence length if known: the slot buffer is then allocated once.
        """
        options = options or PassOptions()
        if not self.retrieves and (options.retrieval is not None or options.replay is not None or options.audits):
            raise ValueError(f"{type(self).__name__} reads every slot: retrieval, replay and audits do not apply")
        if options.retrieval is not None:
            check_retrieval(options.retrieval, self.config.scorer)
        cfg, weight = self.config, self.cell.weight_ih
        retrieval = options.retrieval or self.retrieval
        capacity = max(1, steps // cfg.k_att) if steps else 16
        memory = SlotMemory(batch_size, cfg.hidden_size, device=weight.device if device is None else device,
                            dtype=weight.dtype if dtype is None else dtype, capacity=capacity)
        index = None
        searches = self.scorer.supports_mips and self.retrieves and options.replay is None  # a replay needs no search
        if searches:
            index = make_index(retrieval)
            index.reset(batch_size, cfg.attn_dim)  # keys, e.g. W_k m_i (d_k <= H: less to scan per search)
        recorder = PassRecorder(options, audit_skip_reason=self.audit_skip_reason(retrieval, options.stale_keys),
                                searches=searches, batch_size=batch_size, key_size=cfg.attn_dim, k_top=cfg.k_top,
                                k_att=cfg.k_att, k_trunc=cfg.k_trunc)
        return SABState(memory, index, recorder)

    def forward(self, x: torch.Tensor, state: SABState | None = None) -> tuple[torch.Tensor, SABState]:
        """Per-step features (B, T, 2H) = [h_t ; s_t] for inputs x (B, T, I), continuing ``state`` (None: a
        fresh one); returns the features and the state after the last step."""
        check_input(self, x, self.config.input_size)
        cfg = self.config
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B, device=x.device, dtype=x.dtype, steps=T)
        # The scorer's projections, taken once per call (parameters change between calls on one state).
        projection = self.scorer.projection() if self.scorer.supports_mips else None
        explore = cfg.explore if self.training and self.retrieves else 0  # exploration candidates per step
        compiled = runs_compiled(self, state, x, explore)
        # ``ops.memory``: keys projected once per slot. Not for reads in the graph of a detached memory (a
        # stream's later windows), which project their candidates: re-making every slot's key after each
        # update would cost O(N) per window for nothing. The compiled path projects its candidates too.
        if self.caches_keys and not compiled and (state.memory.writes_take_key_grads or not torch.is_grad_enabled()):
            state.memory.cache_keys(projection.key_weight)
        stores_h_hat, to_state = cfg.slot_value == "h_hat", cfg.summary_to_state
        if compiled:
            return compiled_forward(self, x, state, projection), state
        # The input half of every step's gates in one matmul, outside the time loop (``input_projection``: its
        # backward avoids a very slow BLAS shape). Time-major (T, B, 4H): each step's (B, 4H) slice is
        # contiguous for its addmm.
        cell = self.cell
        input_gates = input_projection(x.transpose(0, 1), cell.weight_ih, cell.bias_ih + cell.bias_hh)
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
                s = self._attend(h_hat, state, t, projection, explore)
                h = h_hat + s if to_state else h_hat
            hs.append(h)
            ss.append(s)
            if (t + 1) % cfg.k_att == 0:
                state.write(h_hat if stores_h_hat else h, t, projection.key if projection is not None else None)
        state.h, state.c, state.t = h, c, state.t + T
        # one stack of h_0, s_0, h_1, s_1, ... viewed as (B, T, 2H) = [h_t ; s_t]: one copy instead of three
        features = torch.stack([v for pair in zip(hs, ss) for v in pair], dim=1).view(B, T, 2 * cfg.hidden_size)
        return features, state

    def truncates(self, t: int) -> bool:
        """Whether the chain (h, c) is cut before step t."""
        return t % self.config.k_trunc == 0

    def _attend(self, h_hat: torch.Tensor, state: SABState, t: int, projection, explore: int) -> torch.Tensor:
        """Sparse summary s_t (B, H) of the memory for provisional states ĥ_t (B, H); ``projection`` the
        scorer's projections of this call (None: a scorer no index serves), ``explore`` the exploration
        candidates per step."""
        k, eps = self.config.k_top, self.config.eps
        count, recorder = self.config.candidates, state.recorder
        step = state.attention_steps
        state.attention_steps += 1
        sampled, scored = recorder.audits_at(step, t)
        # ids (B, C), or (B, C + R) when exploring
        ids, query = self._retrieve(h_hat, state, count, step, projection, explore)
        # No padding among the candidates (an exact search over at least C slots never pads; other searches
        # are checked): skip the masks. Every backend then takes the same path, so equal candidates give
        # bit-identical results.
        exact_search = recorder.replay is None and (state.index is None or state.index.exact) and not explore
        # (state.index is None here means a scorer that scans every slot: an exact search too)
        full = state.memory.size >= count and (exact_search or bool((ids >= 0).all()))
        spec = self.exploring_spec if explore else self.attention_spec
        if query is not None and self.use_fused:
            query_in, key_weight = projection.fused_inputs(query)
            summary, weights, scores = state.memory.attend(ids, query_in, key_weight, None if full else ids >= 0, spec)
        else:
            slots = state.memory.read(ids)  # (B, C, H), in the graph
            scores = self._score(h_hat, projection, query, slots)  # (B, C), in the graph
            if self.config.sparsifier == "softmax":
                weights = softmax_topk_weights(scores, k, valid=None if full else ids >= 0, explore=explore,
                                               all_valid=full)
            elif full:
                weights = sparse_attention_weights(scores, k, eps, all_valid=True)
            else:
                weights = sparse_attention_weights(scores, k, eps, valid=ids >= 0)
            summary = (weights.unsqueeze(2) * slots).sum(dim=1)  # s_t; cheaper than bmm for C = K+1 rows
        if recorder.diagnostics is not None:
            recorder.diagnostics.attention(t, ids, scores, weights)
        if sampled or scored:  # the searched candidates only (exploration candidates are random by design)
            searched = ids.shape[1] - explore
            recorder.stats.audit(query.detach(), recorder.exact_index, ids[:, :searched], scores.detach()[:, :searched],
                                 weights.detach()[:, :searched], k, sampled=sampled, scored=scored)
        recorder.log(t, ids, weights, k)
        return summary

    def _retrieve(self, h_hat: torch.Tensor, state: SABState, count: int, step: int, projection, explore: int):
        """Candidate slot ids (B, count), -1 padded (then the exploration candidates), and the search query
        (B, d_k) in the graph (None for scorers that no index can serve)."""
        recorder = state.recorder
        query = None
        if projection is not None:
            query = projection.query(h_hat)  # what the index is searched with; re-scores the candidates
            recorder.query(query)
        if recorder.replay is not None:
            return recorder.replayed(step, count + explore, state.memory.values_buffer.device), query
        if query is not None:
            start = time.perf_counter()
            _, ids = state.index.search(query.detach(), count)
            # The index checked this state's first keys and query for NaN/Inf; checking every call would read
            # every value again (and sync with a GPU) at each step: inputs are validated once per state.
            state.index.trust_inputs()
            # One canonical order (newest slot first, padding last) for every backend: an approximate index
            # that returns the exact candidate set then gives bit-identical results to exact search, so a
            # difference between runs measures missed candidates and not summation order.
            ids = ids.sort(dim=1, descending=True).values
            recorder.stats.search_seconds += time.perf_counter() - start
            return with_exploration(ids, explore, state.memory.size), query
        with torch.no_grad():
            scores = self.scorer(h_hat, state.memory.values())  # (B, N)
            top = scores.topk(min(count, state.memory.size), dim=1).indices
        if top.shape[1] < count:
            top = torch.cat([top, top.new_full((top.shape[0], count - top.shape[1]), -1)], dim=1)
        return with_exploration(top, explore, state.memory.size), None

    def _score(self, h_hat: torch.Tensor, projection, query: torch.Tensor | None, slots: torch.Tensor) -> torch.Tensor:
        """Exact scores (B, C) of candidate slots (B, C, H), in the graph."""
        if query is not None:
            return projection.scores(query, slots)
        return self.scorer(h_hat, slots)


def with_exploration(ids: torch.Tensor, explore: int, memory_size: int) -> torch.Tensor:
    """The searched candidates (B, C) followed by ``explore`` = R slots drawn uniformly from the memory of
    ``memory_size`` slots (B, C + R).

    A draw that repeats a candidate or an earlier draw becomes padding (-1), so no slot is counted twice;
    with N much larger than C that is rare. Draws use torch's global generator (seeded by the training
    loop and saved in its checkpoints, so a resumed run draws the same slots).
    """
    if not explore:
        return ids
    draws = torch.randint(0, memory_size, (ids.shape[0], explore), device=ids.device)
    repeats = (draws.unsqueeze(2) == ids.unsqueeze(1)).any(dim=2)
    repeats |= (draws.unsqueeze(2) == draws.unsqueeze(1)).tril(diagonal=-1).any(dim=2)
    return torch.cat([ids, draws.masked_fill(repeats, -1)], dim=1)


class DenseAttentionLayer(SABLayer):
    """Baseline: the same LSTM and memory, dense softmax attention over every slot, no truncation."""

    retrieves = False

    def extra_repr(self) -> str:
        c = self.config
        return f"k_att={c.k_att}, attend_every={c.attend_every}, scorer={c.scorer!r}"

    def truncates(self, t: int) -> bool:
        return False  # full gradients

    def _attend(self, h_hat: torch.Tensor, state: SABState, t: int, projection, explore: int) -> torch.Tensor:
        B, N = h_hat.shape[0], state.memory.size
        ids = torch.arange(N, device=h_hat.device).expand(B, N)
        slots = state.memory.read(ids)  # (B, N, H)
        query = projection.query(h_hat) if projection is not None else None
        weights = torch.softmax(self._score(h_hat, projection, query, slots), dim=1)  # (B, N)
        state.recorder.log(t, ids, weights, N)
        return torch.bmm(weights.unsqueeze(1), slots).squeeze(1)
