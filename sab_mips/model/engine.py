"""The memory-bounded engine: one training step of SAB in memory that does not grow with T.

Plain autograd keeps every step's activations, O(T·B·H) memory. SAB does not need them: the chain (h, c)
is cut every ``k_trunc`` steps, so the computation splits into chunks (a whole number of truncation
segments) that interact only through the memory slots. The engine

1. runs the sequence forward chunk by chunk **without a graph** (``SABLayer`` with a carried state),
   keeping the slots, each chunk's start state (h, c), the logits and every attention step's candidate ids;
2. takes the gradient of the loss with respect to the logits;
3. sweeps the chunks **in reverse**: it re-runs one chunk with autograd from its start state, replaying its
   recorded candidates (no search), and backpropagates the chunk's logit gradients. The slot memory's
   autograd functions do the rest: a read of an older slot deposits its gradient in a shared gradient
   buffer, and a slot's write, when it runs backward, takes everything deposited on it — by the chunks
   after it (already swept) and by later steps of its own chunk. Then the chunk's graph is freed.

Peak memory: the slots and their gradients (2·B·N·H), the logits and their gradients (2·B·T·O), the candidate
ids (S·B·C int32) and one chunk's graph. With a ``chunk_loss`` (a loss that splits over chunks of steps,
as the tasks' losses do) the loss is taken chunk by chunk in the sweep too, and of the logits only
the values (B·T·O) are held. Cost: one forward without a graph, then one forward with a graph
and one backward, about 1.3× a plain step. The gradients equal plain autograd's (``tests/test_engine.py``,
float64, to 1e-10): the engine only changes when, not what, is computed.

Shapes: B batch, T steps, O outputs, N slots, S attention steps, C candidates per step.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from .options import PassOptions

# chunk_loss(logits of steps [a, b), y, a, T) -> that chunk's share of the loss
ChunkLoss = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def forward_backward(model, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     chunk: int = 1000, chunk_loss: ChunkLoss | None = None, options: PassOptions | None = None):
    """``model.forward_backward``: the loss of ``loss_fn(model(x), y)``, its gradient accumulated into the
    parameters' ``.grad`` (and into ``x.grad`` when x requires it), and the pass's ``SABOutput``.

    chunk: steps re-run at once in the backward sweep (rounded to a multiple of ``k_trunc``): the memory
        of one chunk's graph against the Python overhead of many small ones.
    options: what the forward pass measures or replays (``PassOptions``; its candidates are always kept,
        for the sweep to replay them).
    chunk_loss: ``chunk_loss(logits[:, a:b], y, a, T)``, the share of ``loss_fn(logits, y)`` that steps
        [a, b) contribute (the shares of consecutive chunks sum to the loss; e.g. ``Task.chunk_loss``).
        With it, each chunk's share and its gradient are taken in the backward sweep, from the logits
        re-run there, instead of once over the whole sequence: the (B, T, O) logit gradient and the
        whole-sequence loss graph (about three logit-sized buffers at its peak) are never held.
    """
    layer, head, cfg = model.layer, model.head, model.config
    if not layer.retrieves:
        raise ValueError(f"{type(model).__name__} keeps full gradients through time (no truncation): the "
                         f"memory-bounded engine does not apply")
    options = options or PassOptions()
    if options.collect_queries:
        raise ValueError("forward_backward does not collect queries; use run() for that")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunk = -(-chunk // cfg.k_trunc) * cfg.k_trunc  # chunks start on the truncation grid
    B, T, _ = x.shape
    state = layer.initial_state(B, replace(options, keep_candidates=True), device=x.device, dtype=x.dtype, steps=T)
    starts = []  # (first step, h, c, slots written, attention steps done) at the start of each chunk
    logits = None
    with torch.no_grad():
        for a in range(0, T, chunk):
            starts.append((a, state.h, state.c, state.memory.size, state.attention_steps))
            features, state = layer(x[:, a : a + chunk], state)
            out = head(features)
            if logits is None:
                logits = out.new_empty(B, T, out.shape[2])
            logits[:, a : a + chunk] = out
    if chunk_loss is None:
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_()
            loss = loss_fn(leaf, y)
            (grad_logits,) = torch.autograd.grad(loss, leaf)
    else:
        loss, grad_logits = logits.new_zeros(()), None
    candidates = state.recorder.take_candidates()  # (S, B, C)
    ends = [s[4] for s in starts[1:]] + [state.attention_steps]
    for (a, h, c, slots_before, first_step), last_step in zip(reversed(starts), reversed(ends)):
        replay = candidates[first_step:last_step] if candidates is not None else None
        chunk_state = layer.initial_state(B, PassOptions(replay=replay), device=x.device, dtype=x.dtype)
        chunk_state.memory = state.memory.rewound(slots_before)
        chunk_state.h, chunk_state.c, chunk_state.t = h, c, a
        with torch.enable_grad():
            features, _ = layer(x[:, a : a + chunk], chunk_state)
            if chunk_loss is None:
                roots, grads = [head(features)], [grad_logits[:, a : a + chunk]]
            else:
                share = chunk_loss(head(features), y, a, T)
                loss = loss + share.detach()
                roots, grads = ([share], [torch.ones_like(share)]) if share.requires_grad else ([], [])
            token = chunk_state.memory.token
            if token is not None and token.requires_grad:
                # the chunk's last slots may be read only by later chunks: through the token their writes
                # still run backward and take the gradient those chunks deposited
                roots.append(token)
                grads.append(torch.zeros_like(token))
            if roots:
                torch.autograd.backward(roots, grads)
    return model.output(logits, state, loss=loss.detach())
