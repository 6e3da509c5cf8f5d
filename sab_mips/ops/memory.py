"""The slot memory of one forward pass: a preallocated buffer that keeps gradients flowing into slots.

Shapes: B batch, H hidden size, N slots written so far, C slots read at once.

Why not keep the slots as a list and ``torch.cat`` them every step (as the released code does)? Each step
would copy the whole memory into the autograd graph: O(N) time and graph memory per step, O(T²) overall.
Here the slot values live in one detached (B, capacity, H) buffer that doubles when full, and two small
autograd functions connect it to the graph:

* ``write(h, t)`` copies ``h`` (B, H) into the next slot. In the backward pass it hands ``h`` whatever
  gradient the reads of that slot have accumulated.
* ``read(ids)`` gathers slots (B, C, H). In the backward pass it adds its output gradient into a
  (B, capacity, H) gradient buffer at the rows it read.
* ``attend(ids, ...)`` is a read fused with one whole attention step over the slots read (scores,
  sparsifier, weighted sum; ``sparse_attention``): one autograd node instead of dozens.

Key cache (cosine scorer, ``cache_keys(W_k)``): each slot's unit key k̂_i = W_k m_i / |W_k m_i| is computed
once, when the slot is written, and kept in a (B, capacity, d) buffer beside the slots, instead of being
projected again every time the slot is a candidate. A read then deposits the gradient of the unit key in a
second gradient buffer, and the slot's write, in its backward, takes the sum through the normalisation and
W_k once (``sparse_attention.unit_backward``): it adds W_kᵀ g_k to the slot's gradient and returns g_k m_iᵀ
as W_k's. Only a write in the same graph can do that, so a ``detached()`` memory (whose older slots have no
write in the graph) projects the candidates as before. The keys are recomputed when W_k has changed since
they were made (an optimiser step between two calls on one state).

For this to be correct, every read of a slot must run its backward before the slot's write does. The
functions thread a scalar *token* through the pass: write j consumes token j−1 and produces token j; a
read consumes the latest token. Autograd runs a node only after every consumer of its outputs, so write j
waits for all reads that came after it (directly, or through writes j+1, j+2, ...). The token carries no
information; its gradient is always zero.

Cost per step: O(C·H) for a read, O(H) for a write (amortised), independent of N. Outside autograd
(``torch.no_grad()`` or inputs that need no gradient) reads and writes are plain copies.
"""
from __future__ import annotations

import torch

from .sparse_attention import AttentionSpec, attend_backward, attend_forward, unit_backward, unit_key


class SlotBuffers:
    """The slot values and their accumulated gradients: what the autograd functions need in backward.

    Kept apart from ``SlotMemory`` so that the functions' contexts never reference the token: the token's
    ``grad_fn`` owns those contexts, and a context → memory → token → grad_fn cycle would keep every
    finished pass's graph and buffers alive (a leak of the whole graph per update, measured).
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values  # (B, capacity, H)
        self.grad: torch.Tensor | None = None  # (B, capacity, H), allocated at the first backward read
        # the key cache (cosine scorer): unit keys and their norms, the W_k (and its version) they were
        # made with, and the accumulated gradient of the unit keys
        self.keys: torch.Tensor | None = None  # (B, capacity, d)
        self.key_norms: torch.Tensor | None = None  # (B, capacity, 1)
        self.key_weight: torch.Tensor | None = None
        self.key_version = -1
        self.key_grad: torch.Tensor | None = None  # (B, capacity, d)

    def accumulate_grad(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.grad = _accumulate(self.grad, self.values, ids, grad)

    def accumulate_key_grad(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.key_grad = _accumulate(self.key_grad, self.keys, ids, grad)

    def grad_buffer(self) -> torch.Tensor:
        """The accumulated slot gradients (B, capacity, H), allocated (zeros) or grown to the values' shape,
        for a caller that adds its reads' gradients in place (the compiled recurrence, ``sab_mips.kernel``)."""
        self.grad = _zeros_or_grown(self.grad, self.values)
        return self.grad

    def take_grad(self, slot: int) -> torch.Tensor | None:
        return _take(self.grad, slot)

    def take_key_grad(self, slot: int) -> torch.Tensor | None:
        return _take(self.key_grad, slot)

    def without_grads(self) -> "SlotBuffers":
        """New buffers sharing these slot values and cached keys, with no accumulated gradient."""
        out = SlotBuffers(self.values)
        out.keys, out.key_norms, out.key_weight, out.key_version = self.keys, self.key_norms, self.key_weight, self.key_version
        return out

    def keys_made_with(self, key_weight: torch.Tensor | None) -> bool:
        """Whether the cached keys are those of ``key_weight`` as it is now."""
        return (key_weight is not None and self.key_weight is key_weight
                and self.key_version == key_weight._version)


def _accumulate(grad: torch.Tensor | None, like: torch.Tensor, ids: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``grad`` (allocated, or grown, to the shape of ``like`` (B, capacity, w)) plus ``update`` (B, C, w) at
    the rows ``ids`` (B, C)."""
    grad = _zeros_or_grown(grad, like)
    grad.view(-1, grad.shape[2]).index_add_(0, _flat_ids(grad, ids), update.reshape(-1, update.shape[2]))
    return grad


def _zeros_or_grown(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``grad``, or zeros, grown (zero-filled) to the shape of ``like`` (B, capacity, w) if it is smaller."""
    if grad is not None and grad.shape[1] >= like.shape[1]:
        return grad
    grown = torch.zeros_like(like)
    if grad is not None:
        grown[:, : grad.shape[1]] = grad
    return grown


def _take(grad: torch.Tensor | None, slot: int) -> torch.Tensor | None:
    """The gradient accumulated on ``slot`` (B, w), reset to zero: a second backward (retain_graph) must not
    see it again."""
    if grad is None:
        return None
    out = grad[:, slot].clone()
    grad[:, slot] = 0
    return out


class SlotMemory:
    """Per-sequence memory slots with their time steps, for one forward pass over a batch."""

    def __init__(self, batch_size: int, hidden_size: int, device=None, dtype=None, capacity: int = 16) -> None:
        self._buffers = SlotBuffers(torch.empty(batch_size, capacity, hidden_size, device=device, dtype=dtype))
        self.times: list[int] = []
        self._token: torch.Tensor | None = None  # None until a write enters the autograd graph
        # False for a detached() memory: its older slots' writes are not in the graph, so the gradient of
        # their cached keys would never reach W_k; reads in the graph then project the candidates instead
        self._writes_take_key_grads = True

    @property
    def size(self) -> int:
        """N, the number of slots written."""
        return len(self.times)

    @property
    def buffers(self) -> SlotBuffers:
        """The slot values and their accumulated gradients, for an autograd function that reads slots outside
        ``read``/``attend`` (the compiled recurrence); it must hold these, never the memory (see
        ``SlotBuffers``)."""
        return self._buffers

    @property
    def values_buffer(self) -> torch.Tensor:
        """The whole (B, capacity, H) buffer; slots beyond ``size`` are uninitialised."""
        return self._buffers.values

    def values(self) -> torch.Tensor:
        """The stored slots, (B, N, H), detached (a view: valid until the next write)."""
        return self._buffers.values[:, : self.size]

    def cache_keys(self, key_weight: torch.Tensor) -> None:
        """Keep the unit key W_k m / |W_k m| of every slot, written so far and from now on (cosine scorer);
        the keys of the slots already written are (re)computed unless they were made with ``key_weight``
        as it is now. See the module docstring."""
        buffers = self._buffers
        if buffers.keys_made_with(key_weight):
            return
        B, capacity, _ = buffers.values.shape
        buffers.keys = buffers.values.new_zeros(B, capacity, key_weight.shape[0])
        buffers.key_norms = buffers.values.new_zeros(B, capacity, 1)
        buffers.key_grad = None
        if self.size:
            with torch.no_grad():
                unit, norms = unit_key(self.values(), key_weight)
            buffers.keys[:, : self.size], buffers.key_norms[:, : self.size] = unit, norms
        buffers.key_weight, buffers.key_version = key_weight, key_weight._version

    def write(self, h: torch.Tensor, t: int) -> torch.Tensor | None:
        """Store ``h`` (B, H), the final state of step ``t``, as slot N. Returns its unit key (B, d) when the
        memory caches keys (``cache_keys``), else None."""
        slot = self.size
        self._ensure_capacity(slot + 1)
        buffers = self._buffers
        buffers.values[:, slot] = h.detach()
        self.times.append(t)
        key_weight = buffers.key_weight
        unit = None
        if key_weight is not None:
            with torch.no_grad():
                unit, norms = unit_key(h.detach(), key_weight)
            buffers.keys[:, slot], buffers.key_norms[:, slot] = unit, norms
        if torch.is_grad_enabled() and h.requires_grad:
            if self._token is None:
                self._token = torch.zeros((), device=h.device, dtype=h.dtype, requires_grad=True)
            self._token = _WriteSlot.apply(self._token, h, key_weight, buffers, slot)
        return unit

    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """Slots ``ids`` (B, C) of each sequence, (B, C, H). Ids of -1 (padding) read slot 0."""
        ids = ids.clamp(min=0)
        if self._token is not None and torch.is_grad_enabled():
            return _ReadSlots.apply(self._token, ids, self._buffers)
        return _gather(self._buffers.values, _flat_ids(self._buffers.values, ids), ids.shape)

    def attend(self, ids: torch.Tensor, query: torch.Tensor, key_weight: torch.Tensor | None,
               valid: torch.Tensor | None, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One attention step over slots ``ids`` (B, C): (summary (B, H), weights (B, C), scores (B, C)).

        The same as reading the slots and running ``sparse_attention.attend_forward`` on them, with the
        closed-form backward; weights and scores are detached. Ids of -1 (padding) must be marked in
        ``valid``.
        """
        ids = ids.clamp(min=0)
        buffers = self._buffers
        cached = spec.scorer == "cosine" and buffers.keys_made_with(key_weight)
        if self._token is not None and torch.is_grad_enabled():
            cached = cached and self._writes_take_key_grads
            return _AttendSlots.apply(self._token, ids, query, key_weight, valid, buffers, spec, cached)
        # no node: autograd runs through attend_forward's ops; cached keys carry no gradient to W_k
        cached = cached and not (torch.is_grad_enabled() and key_weight.requires_grad)
        flat_ids = _flat_ids(buffers.values, ids)
        unit = _gather(buffers.keys, flat_ids, ids.shape) if cached else None
        summary, weights, scores, _ = attend_forward(_gather(buffers.values, flat_ids, ids.shape), query, key_weight,
                                                     valid, spec, unit_keys=unit)
        return summary, weights, scores

    @property
    def token(self) -> torch.Tensor | None:
        """The latest write's token (None before any write in the graph). Backpropagating into it (with a
        zero gradient) runs the backward of every write, also of slots that nothing in the graph read yet:
        their gradient may have been deposited from outside the graph (``rewound``)."""
        return self._token

    def detached(self) -> "SlotMemory":
        """The same slots as constants: reads from the returned memory give no gradient to what came before.

        The slot values are shared (later writes land in the same buffer); the gradient buffer and the
        token start afresh, so a backward through an earlier graph cannot reach what is written after.
        """
        out = SlotMemory.__new__(SlotMemory)
        out._buffers, out.times, out._token = self._buffers.without_grads(), list(self.times), None
        out._writes_take_key_grads = False
        return out

    @property
    def writes_take_key_grads(self) -> bool:
        """False for a ``detached()`` memory: reads in the graph then project their candidates, and a key cache
        would serve only reads without a graph."""
        return self._writes_take_key_grads

    @classmethod
    def of_constants(cls, values: torch.Tensor, times: list[int]) -> "SlotMemory":
        """A detached memory holding the slots ``values`` (B, N, H) (copied) written at steps ``times``, e.g.
        a memory restored from a checkpoint; room for as many more before it grows."""
        if values.shape[1] != len(times):
            raise ValueError(f"{values.shape[1]} slots but {len(times)} times")
        B, N, H = values.shape
        out = cls(B, H, device=values.device, dtype=values.dtype, capacity=max(16, 2 * N))
        out._buffers.values[:, :N] = values
        out.times = list(times)
        out._writes_take_key_grads = False
        return out

    def newest(self, count: int) -> "SlotMemory":
        """A detached memory of the ``count`` newest slots (their values and times, copied), for a memory of
        bounded size: the slots keep their order and are renumbered from 0."""
        if not 0 <= count <= self.size:
            raise ValueError(f"cannot keep {count} of a memory of {self.size} slots")
        return SlotMemory.of_constants(self._buffers.values[:, self.size - count : self.size],
                                       self.times[self.size - count :])

    def rewound(self, size: int) -> "SlotMemory":
        """This memory as it was when it held ``size`` slots, sharing its buffers and accumulated gradients.

        The memory-bounded engine re-runs a chunk of the sequence from its start: the chunk's writes land
        on the same slots again (with the same values), its reads of older slots deposit gradient in the
        shared gradient buffer, and the gradient that later chunks deposited on the chunk's own slots is
        handed to them when their writes run backward.
        """
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot rewind a memory of {self.size} slots to {size}")
        out = SlotMemory.__new__(SlotMemory)
        values = self._buffers.values
        # a fresh token, so that reads of the older slots (before any write of the re-run) reach the buffer
        token = torch.zeros((), device=values.device, dtype=values.dtype, requires_grad=True)
        out._buffers, out.times, out._token = self._buffers, self.times[:size], token
        out._writes_take_key_grads = self._writes_take_key_grads
        return out

    def _ensure_capacity(self, needed: int) -> None:
        buffers = self._buffers
        B, capacity, H = buffers.values.shape
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        buffers.values = _grown(buffers.values, new_capacity)
        if buffers.keys is not None:
            buffers.keys, buffers.key_norms = _grown(buffers.keys, new_capacity), _grown(buffers.key_norms, new_capacity)


def _grown(buffer: torch.Tensor, capacity: int) -> torch.Tensor:
    """``buffer`` (B, old capacity, w) copied into a new (B, capacity, w) buffer."""
    out = buffer.new_empty(buffer.shape[0], capacity, buffer.shape[2])
    out[:, : buffer.shape[1]] = buffer
    return out


def _flat_ids(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Row numbers (B*C,) of slots ``ids`` (B, C) in ``values`` (B, capacity, H) viewed as (B*capacity, H)."""
    offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * values.shape[1]
    return (ids + offsets).reshape(-1)


def _gather(values: torch.Tensor, flat_ids: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows ``flat_ids`` (``_flat_ids``) of ``values`` (B, capacity, w), as (B, C, w) for ids of ``shape`` (B, C)."""
    # index_select on the flattened buffer is markedly cheaper than advanced indexing values[rows, ids]
    flat = values.reshape(-1, values.shape[2]).index_select(0, flat_ids)
    return flat.view(shape[0], shape[1], values.shape[2])


class _WriteSlot(torch.autograd.Function):
    """Slot ``slot`` ← h. Backward: h takes the slot's accumulated gradient; with the key cache, also that of
    its unit key, taken through the normalisation and W_k (``key_weight``), which gets g_k mᵀ."""

    @staticmethod
    def forward(ctx, token: torch.Tensor, h: torch.Tensor, key_weight: torch.Tensor | None, buffers: SlotBuffers,
                slot: int) -> torch.Tensor:
        ctx.buffers, ctx.slot, ctx.key_weight = buffers, slot, key_weight
        return token.new_zeros(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_token: torch.Tensor):
        buffers, slot = ctx.buffers, ctx.slot
        g_h, g_key_weight = buffers.take_grad(slot), None
        g_unit = buffers.take_key_grad(slot) if ctx.key_weight is not None else None
        if g_unit is not None:
            g_keys = unit_backward(g_unit, buffers.keys[:, slot], buffers.key_norms[:, slot])  # (B, d)
            g_h = g_keys @ ctx.key_weight if g_h is None else g_h.addmm_(g_keys, ctx.key_weight)
            g_key_weight = g_keys.t() @ buffers.values[:, slot]  # Σ_b g_k mᵀ, (d, H)
        return torch.zeros_like(grad_token), g_h, g_key_weight, None, None


class _ReadSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: torch.Tensor, ids: torch.Tensor, buffers: SlotBuffers) -> torch.Tensor:
        ctx.buffers = buffers
        ctx.save_for_backward(ids)
        return _gather(buffers.values, _flat_ids(buffers.values, ids), ids.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ctx.buffers.accumulate_grad(ids, grad_out)
        return grad_out.new_zeros(()), None, None


class _AttendSlots(torch.autograd.Function):
    """One attention step over slots ``ids``. With ``cached`` keys it reads the unit keys from the cache and
    deposits their gradient there (W_k gets its gradient from the writes); else it projects the slots."""

    @staticmethod
    def forward(ctx, token, ids, query, key_weight, valid, buffers: SlotBuffers, spec: AttentionSpec, cached: bool):
        flat_ids = _flat_ids(buffers.values, ids)
        unit = _gather(buffers.keys, flat_ids, ids.shape) if cached else None
        summary, weights, scores, saved = attend_forward(_gather(buffers.values, flat_ids, ids.shape), query,
                                                         key_weight, valid, spec, unit_keys=unit)
        ctx.buffers, ctx.saved, ctx.spec = buffers, saved, spec
        ctx.save_for_backward(ids)
        ctx.mark_non_differentiable(weights, scores)
        return summary, weights, scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_summary, _grad_weights, _grad_scores):
        (ids,) = ctx.saved_tensors
        g_slots, g_query, g_key_weight, g_unit = attend_backward(grad_summary, ctx.saved, ctx.spec)
        ctx.buffers.accumulate_grad(ids, g_slots)
        if g_unit is not None:
            ctx.buffers.accumulate_key_grad(ids, g_unit)
        return grad_summary.new_zeros(()), None, g_query, g_key_weight, None, None, None, None
