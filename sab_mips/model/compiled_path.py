"""When an ``SABLayer`` call runs on the compiled recurrence (``sab_mips.kernel``), and the call itself.

``SABLayer.kernel`` chooses: ``"python"`` the step-by-step Python path (the reference twin), ``"compiled"``
the C++ recurrence (an error where it cannot run), ``"auto"`` (the default) the compiled one where it builds
and covers the pass, else Python with one warning line per reason. What the compiled path covers: the dot
and cosine scorers with the fused attention step, both sparsifiers, every schedule (``k_att``,
``attend_every``, ``k_trunc``, ``k_cand``), ``slot_value``, ``summary_to_state``; candidates from the exact
index (searched inside the kernel), from any other index (one Python call per attention step) or replayed;
float32 and float64 on the CPU; kept candidates, the attention record and the attention diagnostics. Not
covered, so run in Python: exploration, retrieval audits and collected queries (they look into every step),
the plain autograd path (``use_fused=False``) and the scorers no index serves.
"""
from __future__ import annotations

import time
import warnings

import torch

from ..errors import UserError
from ..kernel import ChunkInputs, CompiledRecurrence, RecurrenceSpec, build_failure
from .state import SABState

KERNELS = ("auto", "python", "compiled")
_warned: set[str] = set()


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise UserError(f"unknown kernel {kernel!r}; valid choices: {', '.join(KERNELS)}")


def use_kernel(model, kernel: str) -> None:
    """Run ``model``'s SAB steps on ``kernel``; a model without an SAB layer (the LSTM baselines) has no kernel
    to choose, and is left as it is."""
    check_kernel(kernel)
    layer = getattr(model, "layer", None)
    if hasattr(layer, "set_kernel"):
        layer.set_kernel(kernel)


def uncovered_reason(layer, state: SABState, x: torch.Tensor, explore: int) -> str | None:
    """Why the compiled recurrence cannot run this call of ``layer`` (None: it can), the build aside."""
    cfg, recorder = layer.config, state.recorder
    if not layer.retrieves:
        return f"{type(layer).__name__} reads every slot"
    if not layer.scorer.supports_mips:
        return f"scorer {cfg.scorer!r} scans every slot"
    if not layer.use_fused:
        return "the plain autograd path was asked for (use_fused=False)"
    if x.device.type != "cpu":
        return f"the compiled recurrence runs on the CPU only, not {x.device.type}"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype} (float32 and float64 are compiled)"
    if explore:
        return "exploration candidates"
    if recorder.audit_every or recorder.audit_from is not None:
        return "retrieval audits"
    if recorder.queries is not None:
        return "collected queries"
    return None


def runs_compiled(layer, state: SABState, x: torch.Tensor, explore: int) -> bool:
    """Whether this call runs compiled (``SABLayer.kernel``); warns once per reason when ``auto`` falls back."""
    if layer.kernel == "python":
        return False
    reason = uncovered_reason(layer, state, x, explore)
    if reason is None:
        failure = build_failure()
        reason = f"the compiled recurrence is unavailable: {failure}" if failure else None
    if reason is None:
        return True
    if layer.kernel == "compiled":
        raise UserError(f"kernel 'compiled' cannot run this pass: {reason} (kernel 'auto' falls back to Python)")
    if reason not in _warned:
        _warned.add(reason)
        # one line, "sab-mips:0: UserWarning: ..." (no source line to quote); filterable like any warning
        warnings.warn_explicit(f"SAB runs on the Python path: {reason}", UserWarning, "sab-mips", 0)
    return False


def compiled_forward(layer, x: torch.Tensor, state: SABState, projection) -> torch.Tensor:
    """Features (B, T, 2H) of a call on inputs x (B, T, I); ``state`` advanced as the Python path advances it
    (memory, index, recorder, h, c, t, attention steps)."""
    cfg, memory, recorder, index = layer.config, state.memory, state.recorder, state.index
    B, T, _ = x.shape
    H, count = cfg.hidden_size, cfg.candidates
    zeros = x.new_zeros(B, H)
    h0, c0 = (zeros, zeros) if state.h is None else (state.h, state.c)
    grad = torch.is_grad_enabled()
    token = memory.token if grad else None
    times = [t for t in range(state.t, state.t + T) if (t + 1) % cfg.k_att == 0]  # of the slot writes
    attention_times = attention_steps(state.t, T, cfg.attend_every, cfg.k_att, memory.size)
    replay = None
    if recorder.replay is not None:
        replay = recorder.replay[state.attention_steps :]
        if replay.shape[2] != count or replay.shape[0] < len(attention_times):
            raise ValueError(f"replay holds {tuple(recorder.replay.shape)} candidate ids (S, B, C); this pass "
                             f"needs C={count} and {state.attention_steps + len(attention_times)} attention steps")
    exact = replay is None and index is not None and index.name == "exact"
    search = add = None
    if replay is None and not exact:
        search, add = index_callbacks(index, recorder, count)
    spec = RecurrenceSpec(state.t, cfg.k_top, cfg.k_att, cfg.k_trunc, cfg.attend_every, count, cfg.scorer == "cosine",
                          cfg.sparsifier == "softmax", cfg.slot_value == "h_hat", cfg.summary_to_state, cfg.eps)
    inputs = ChunkInputs(memory.values(), memory.buffers if token is not None else None,
                         index.keys if exact else None, replay, search, add, spec)
    temperature = projection.temperature if spec.cosine else None
    cell = layer.cell
    features, h, c, new_values, new_keys, ids, weights, scores, seconds = CompiledRecurrence.apply(
        token if token is not None else zeros.new_zeros(()), x.transpose(0, 1).contiguous(), h0, c0, cell.weight_ih,
        cell.weight_hh, cell.bias_ih + cell.bias_hh, projection.query_weight, projection.key_weight, temperature,
        inputs)
    for value, t in zip(new_values.unbind(1), times):
        memory.write(value, t)
        if recorder.diagnostics is not None:
            recorder.diagnostics.slot(value)
    if exact and times:
        start = time.perf_counter()
        index.add(new_keys)
        recorder.stats.add_seconds += time.perf_counter() - start
        recorder.key_added(new_keys)
    recorder.stats.search_seconds += float(seconds)
    recorder.log_steps(attention_times, ids, weights, cfg.k_top)
    if recorder.diagnostics is not None:
        for s, t in enumerate(attention_times):
            recorder.diagnostics.attention(t, ids[s], scores[s], weights[s])
    state.attention_steps += len(attention_times)
    state.h, state.c, state.t = h, c, state.t + T
    return features


def attention_steps(t0: int, steps: int, attend_every: int, k_att: int, slots: int) -> list[int]:
    """The time steps of [t0, t0 + steps) that attend: every ``attend_every``-th, once a slot exists
    (``slots`` before t0, one more after every ``k_att``-th step)."""
    out = []
    for t in range(t0, t0 + steps):
        if t % attend_every == 0 and slots > 0:
            out.append(t)
        slots += (t + 1) % k_att == 0
    return out


def index_callbacks(index, recorder, count: int):
    """``search`` and ``add`` for the compiled recurrence, doing with ``index`` what the Python path does:
    candidates in the canonical order (newest first, padding last), the index's inputs checked once, times
    and the audits' mirror kept."""
    stats = recorder.stats

    def search(query: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        _, ids = index.search(query, count)
        index.trust_inputs()
        ids = ids.sort(dim=1, descending=True).values
        stats.search_seconds += time.perf_counter() - start
        return ids

    def add(key: torch.Tensor) -> None:
        start = time.perf_counter()
        index.add(key)
        stats.add_seconds += time.perf_counter() - start
        recorder.key_added(key)

    return search, add
