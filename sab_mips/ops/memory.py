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

from .sparse_attention import AttentionSpec, attend_backward, attend_forward


class _SlotBuffers:
    """The slot values and their accumulated gradients: what the autograd functions need in backward.

    Kept apart from ``SlotMemory`` so that the functions' contexts never reference the token: the token's
    ``grad_fn`` owns those contexts, and a context → memory → token → grad_fn cycle would keep every
    finished pass's graph and buffers alive (a leak of the whole graph per update, measured).
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values  # (B, capacity, H)
        self.grad: torch.Tensor | None = None  # (B, capacity, H), allocated at the first backward read

    def accumulate_grad(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        if self.grad is None or self.grad.shape[1] < self.values.shape[1]:
            grown = torch.zeros_like(self.values)
            if self.grad is not None:
                grown[:, : self.grad.shape[1]] = self.grad
            self.grad = grown
        flat_grad = self.grad.view(-1, self.grad.shape[2])
        flat_grad.index_add_(0, _flat_ids(self.grad, ids), grad.reshape(-1, grad.shape[2]))

    def take_grad(self, slot: int) -> torch.Tensor | None:
        if self.grad is None:
            return None
        grad = self.grad[:, slot].clone()
        self.grad[:, slot] = 0  # a second backward (retain_graph) must not see it again
        return grad


class SlotMemory:
    """Per-sequence memory slots with their time steps, for one forward pass over a batch."""

    def __init__(self, batch_size: int, hidden_size: int, device=None, dtype=None, capacity: int = 16) -> None:
        self._buffers = _SlotBuffers(torch.empty(batch_size, capacity, hidden_size, device=device, dtype=dtype))
        self.times: list[int] = []
        self._token: torch.Tensor | None = None  # None until a write enters the autograd graph

    @property
    def size(self) -> int:
        """N, the number of slots written."""
        return len(self.times)

    @property
    def values_buffer(self) -> torch.Tensor:
        """The whole (B, capacity, H) buffer; slots beyond ``size`` are uninitialised."""
        return self._buffers.values

    def values(self) -> torch.Tensor:
        """The stored slots, (B, N, H), detached (a view: valid until the next write)."""
        return self._buffers.values[:, : self.size]

    def write(self, h: torch.Tensor, t: int) -> None:
        """Store ``h`` (B, H), the final state of step ``t``, as slot N."""
        slot = self.size
        self._ensure_capacity(slot + 1)
        self._buffers.values[:, slot] = h.detach()
        self.times.append(t)
        if torch.is_grad_enabled() and h.requires_grad:
            if self._token is None:
                self._token = torch.zeros((), device=h.device, dtype=h.dtype, requires_grad=True)
            self._token = _WriteSlot.apply(self._token, h, self._buffers, slot)

    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """Slots ``ids`` (B, C) of each sequence, (B, C, H). Ids of -1 (padding) read slot 0."""
        ids = ids.clamp(min=0)
        if self._token is not None and torch.is_grad_enabled():
            return _ReadSlots.apply(self._token, ids, self._buffers)
        return _gather(self._buffers.values, ids)

    def attend(self, ids: torch.Tensor, query: torch.Tensor, key_weight: torch.Tensor | None,
               valid: torch.Tensor | None, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One attention step over slots ``ids`` (B, C): (summary (B, H), weights (B, C), scores (B, C)).

        The same as reading the slots and running ``sparse_attention.attend_forward`` on them, with the
        closed-form backward; weights and scores are detached. Ids of -1 (padding) must be marked in
        ``valid``.
        """
        ids = ids.clamp(min=0)
        if self._token is not None and torch.is_grad_enabled():
            return _AttendSlots.apply(self._token, ids, query, key_weight, valid, self._buffers, spec)
        summary, weights, scores, _ = attend_forward(_gather(self._buffers.values, ids), query, key_weight, valid, spec)
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
        out._buffers, out.times, out._token = _SlotBuffers(self._buffers.values), list(self.times), None
        return out

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
        return out

    def _ensure_capacity(self, needed: int) -> None:
        B, capacity, H = self._buffers.values.shape
        if needed <= capacity:
            return
        grown = self._buffers.values.new_empty(B, max(needed, 2 * capacity), H)
        grown[:, :capacity] = self._buffers.values
        self._buffers.values = grown


def _flat_ids(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Row numbers (B*C,) of slots ``ids`` (B, C) in ``values`` (B, capacity, H) viewed as (B*capacity, H)."""
    offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * values.shape[1]
    return (ids + offsets).reshape(-1)


def _gather(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    # index_select on the flattened buffer is markedly cheaper than advanced indexing values[rows, ids]
    flat = values.reshape(-1, values.shape[2]).index_select(0, _flat_ids(values, ids))
    return flat.view(ids.shape[0], ids.shape[1], values.shape[2])  # (B, C, H)


class _WriteSlot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: torch.Tensor, h: torch.Tensor, buffers: _SlotBuffers, slot: int) -> torch.Tensor:
        ctx.buffers, ctx.slot = buffers, slot
        return token.new_zeros(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_token: torch.Tensor):
        return torch.zeros_like(grad_token), ctx.buffers.take_grad(ctx.slot), None, None


class _ReadSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: torch.Tensor, ids: torch.Tensor, buffers: _SlotBuffers) -> torch.Tensor:
        ctx.buffers = buffers
        ctx.save_for_backward(ids)
        return _gather(buffers.values, ids)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ctx.buffers.accumulate_grad(ids, grad_out)
        return grad_out.new_zeros(()), None, None


class _AttendSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, ids, query, key_weight, valid, buffers: _SlotBuffers, spec: AttentionSpec):
        summary, weights, scores, saved = attend_forward(_gather(buffers.values, ids), query, key_weight, valid, spec)
        ctx.buffers, ctx.saved, ctx.spec = buffers, saved, spec
        ctx.save_for_backward(ids)
        ctx.mark_non_differentiable(weights, scores)
        return summary, weights, scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_summary, _grad_weights, _grad_scores):
        (ids,) = ctx.saved_tensors
        g_slots, g_query, g_key_weight = attend_backward(grad_summary, ctx.saved, ctx.spec)
        ctx.buffers.accumulate_grad(ids, g_slots)
        return grad_summary.new_zeros(()), None, g_query, g_key_weight, None, None, None
