"""``CompiledRecurrence``: the compiled SAB recurrence over a chunk of steps as one autograd node.

Its forward runs every step of the chunk in C++ (``recurrence.cpp``: LSTM cell, retrieval, exact
re-scoring, sparsifier, summary, slot writes); its backward is the chunk's reverse sweep, also in C++, not
autograd over many small ops. The slots the chunk reads fall in two groups:

* its own writes: their gradient stays inside the sweep, and the chunk returns the new slots as an output,
  so that reads by later calls (which deposit gradient on them through the slot memory's machinery,
  ``ops.memory``) reach them through the output's gradient;
* older slots (in the memory before the chunk): their values come in as constants, and the backward adds
  the gradient of every read of them into the memory's shared gradient buffer (``SlotBuffers.grad_buffer``),
  where their writes take it when they run backward — the ``token`` input orders that, as for
  ``ops.memory``'s own reads.

Retrieval: exact search over the exact index's keys inside the kernel, replayed candidate ids, or a Python
``search`` callable once per attention step (any other index), with ``add`` told every new key.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from ..ops.memory import SlotBuffers
from .build import compiled_module


@dataclass(frozen=True)
class RecurrenceSpec:
    """What the chunk computes: its first global step ``t0`` and the layer's schedule and options."""

    t0: int
    k_top: int
    k_att: int
    k_trunc: int
    attend_every: int
    count: int  # candidates per attention step, C
    cosine: bool  # the cosine scorer (else dot)
    softmax: bool  # the top-K softmax (else the ReLU rule)
    slot_h_hat: bool  # a slot holds h_hat (else h)
    to_state: bool  # h = h_hat + s (else h = h_hat)
    eps: float

    def args(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass
class ChunkInputs:
    """The chunk's inputs that are not differentiated.

    Attributes:
        old_values: (B, N0, H) the slots in the memory before the chunk (a view of its buffer).
        buffers: where the gradient of reads of old slots goes (None: the old slots are constants).
        index_keys: (B, N0, d) the exact index's keys, searched inside the kernel (None otherwise).
        replay: (S', B, C) the candidate ids of the chunk's attention steps, replayed (None: search).
        search: ``search(query (B, d)) -> ids (B, C)`` for any other index (None: not needed).
        add: ``add(key (B, 1, d))`` after each slot write, for that index.
        spec: the ``RecurrenceSpec``.
    """

    old_values: torch.Tensor
    buffers: SlotBuffers | None
    index_keys: torch.Tensor | None
    replay: torch.Tensor | None
    search: Callable[[torch.Tensor], torch.Tensor] | None
    add: Callable[[torch.Tensor], None] | None
    spec: RecurrenceSpec


class CompiledRecurrence(torch.autograd.Function):
    """(features (B, T, 2H), h, c, new slots (B, Nn, H), their keys (B, Nn, d), candidate ids (S, B, C),
    weights (S, B, C), scores (S, B, C), seconds of in-kernel search) of one chunk; the last five carry no
    gradient."""

    @staticmethod
    def forward(ctx, token, x, h0, c0, w_ih, w_hh, bias, query_weight, key_weight, temperature, inputs: ChunkInputs):
        """x (T, B, I) time-major; w_ih (4H, I), w_hh (4H, H), bias (4H,) = b_ih + b_hh: the LSTM cell."""
        module = compiled_module()
        spec = inputs.spec
        tau = temperature.detach() if temperature is not None else x.new_ones(())
        out = module.forward(x.detach().contiguous(), h0.detach().contiguous(), c0.detach().contiguous(),
                             w_ih.detach().contiguous(), w_hh.detach().contiguous(), bias.detach(),
                             query_weight.detach(), key_weight.detach(), tau, inputs.old_values, inputs.index_keys,
                             inputs.replay, inputs.search, inputs.add, *spec.args())
        features, h, c, new_values, new_keys, ids, weights, scores, seconds = out[:9]
        ctx.spec, ctx.buffers, ctx.old_values, ctx.rest = spec, inputs.buffers, inputs.old_values, out[9:]
        ctx.has_temperature = temperature is not None
        ctx.save_for_backward(c0, w_ih, w_hh, query_weight, key_weight, tau, features, new_values, new_keys, ids,
                              weights)
        ctx.mark_non_differentiable(new_keys, ids, weights, scores, seconds)
        return features, h, c, new_values, new_keys, ids, weights, scores, seconds

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_features, g_h, g_c, g_new_values, *_):
        c0, w_ih, w_hh, query_weight, key_weight, tau, features, new_values, new_keys, ids, weights = ctx.saved_tensors
        g_features = torch.zeros_like(features) if g_features is None else g_features
        g_h = torch.zeros_like(c0) if g_h is None else g_h
        g_c = torch.zeros_like(c0) if g_c is None else g_c
        g_new_values = torch.zeros_like(new_values) if g_new_values is None else g_new_values
        old_grad = ctx.buffers.grad_buffer() if ctx.buffers is not None else None
        new_key_norms, *rest = ctx.rest  # in the order recurrence.cpp's ``Saved`` lists them
        saved = [features, new_values, new_keys, new_key_norms, ids, weights, *rest]
        grads = compiled_module().backward(g_features, g_h, g_c, g_new_values, c0, w_ih.contiguous(),
                                           w_hh.contiguous(), ctx.needs_input_grad[1], query_weight, key_weight, tau,
                                           ctx.old_values, old_grad, saved, *ctx.spec.args())
        g_x, g_h0, g_c0, g_w_ih, g_w_hh, g_bias, g_query_weight, g_key_weight, g_tau = grads
        token_grad = torch.zeros((), dtype=c0.dtype) if ctx.needs_input_grad[0] else None
        return (token_grad, g_x if ctx.needs_input_grad[1] else None, g_h0, g_c0, g_w_ih, g_w_hh, g_bias,
                g_query_weight, g_key_weight, g_tau if ctx.has_temperature else None, None)
