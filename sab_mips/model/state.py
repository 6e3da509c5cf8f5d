"""``SABState``: what SAB carries from one step to the next, and from one call to the next.

A state holds the recurrent state (h, c), the number of steps done, the slot memory and its index, and the
``PassRecorder`` of what the pass measures (made from its ``PassOptions``). ``SABLayer.forward(x, state)``
continues from it, so a sequence can be fed in chunks: the memory persists across calls, the truncation
grid and the slot schedule follow the global step count, and the result equals one call on the whole
sequence. ``detach()`` cuts the graph between chunks (training over windows of one long stream, the memory
persisting as constants).

Shapes: B batch, H hidden size, N slots, d key size.
"""
from __future__ import annotations

import time

import torch

from indexes import MIPSIndex

from ..ops.memory import SlotMemory
from .recorder import PassRecorder


class SABState:
    """The state of one batch of sequences; made by ``SABLayer.initial_state``.

    Attributes:
        h, c: (B, H) the recurrent state after the last step (None before the first).
        t: steps done so far (the next step's global index).
        attention_steps: attention steps done so far (what a replay and the audit schedule count).
        memory: the slot memory; ``index`` the index of its keys (None when the scorer scans every slot, or
            when the candidates are replayed).
        recorder: what this pass measures and keeps (``stats``, audits, record, queries, diagnostics).

    Streaming (one long stream read in windows): ``detach()`` between windows; ``rekey`` refreshes the
    index's keys, which were computed with the weights of the moment each slot was written; ``keep_newest``
    bounds the memory.
    """

    def __init__(self, memory: SlotMemory, index: MIPSIndex | None, recorder: PassRecorder) -> None:
        self.h: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.t = 0
        self.attention_steps = 0
        self.memory = memory
        self.index = index
        self.recorder = recorder

    def detach(self) -> "SABState":
        """Cut the autograd graph here: (h, c) and the memory become constants for what follows. Returns self."""
        if self.h is not None:
            self.h, self.c = self.h.detach(), self.c.detach()
        self.memory = self.memory.detached()
        return self

    def write(self, h: torch.Tensor, t: int, key_of) -> None:
        """Store ``h`` (B, H), the slot of step t, in the memory and its key in the index.

        ``key_of(h)`` gives the key (B, d) the index holds (e.g. k_i = W_k m_i); it is called only when the
        memory does not already cache the slot's key (cosine)."""
        cached_key = self.memory.write(h, t)
        if self.recorder.diagnostics is not None:
            self.recorder.diagnostics.slot(h)
        if self.index is not None:
            start = time.perf_counter()
            with torch.no_grad():
                key = (cached_key if cached_key is not None else key_of(h.detach())).unsqueeze(1)  # (B, 1, d)
            self.index.add(key)
            self.recorder.stats.add_seconds += time.perf_counter() - start
            self.recorder.key_added(key)

    def rekey(self, key_of) -> float:
        """Rebuild the index, and the audits' reference, from every slot's key ``key_of(m_i)`` under the
        weights of now (the keys the index held were computed when each slot was written); returns the
        seconds it took. A state without an index (a scan of every slot, or replayed candidates) has nothing
        to re-key."""
        if self.index is None:
            return 0.0
        start = time.perf_counter()
        B, N = self.memory.values_buffer.shape[0], self.memory.size
        with torch.no_grad():
            keys = key_of(self.memory.values())  # (B, N, d)
        self.index.reset(B, keys.shape[2])
        if N:
            self.index.add(keys)
        self.recorder.rekey(keys)
        return time.perf_counter() - start

    def keep_newest(self, count: int, key_of) -> float:
        """Drop all but the ``count`` newest slots (the memory then holds constants, as after ``detach``) and
        re-key the index over those; returns the seconds the re-keying took."""
        self.memory = self.memory.newest(count)
        return self.rekey(key_of)

