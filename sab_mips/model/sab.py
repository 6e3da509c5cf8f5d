"""The SAB-LSTM: an ``SABLayer`` (the algorithm: see ``layer``) and a head (linear, or one hidden layer: ``head_hidden``) on its features [h_t ; s_t].

``forward(x)`` gives per-step logits; ``run(x, PassOptions(...))`` gives everything one pass can measure,
asked for in its ``PassOptions`` and returned (``SABOutput``), never left on the module: ``retrieval``
searches with another index for one pass (``"exact"`` gives the exact twin of an approximate pass),
``replay`` re-uses recorded candidate ids instead of searching, ``audit_every`` compares every n-th
attention step with exact search; ``forward_backward(x, y, loss_fn)`` is the memory-bounded training step
(``engine``).

Shapes: B batch, T time steps, I input size, H hidden size, O output size, S attention steps, K = k_top.

Example::

    >>> from sab_mips import PassOptions, SABConfig, SABLSTM
    >>> model = SABLSTM(SABConfig(input_size=3, output_size=2, hidden_size=8, k_top=2, k_att=2, k_trunc=4))
    >>> logits, record = model(torch.randn(4, 10, 3), return_attention=True)
    >>> logits.shape, record.slot_ids.shape      # (B, T, O), (S, B, K)
    (torch.Size([4, 10, 2]), torch.Size([8, 4, 2]))
    >>> out = model.run(torch.randn(4, 10, 3), PassOptions(retrieval="faiss:HNSW32", audit_every=1))
    >>> out.stats.as_metrics()["recall"]
    1.0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..retrieval.stats import RetrievalStats
from .config import SABConfig
from .diagnostics import AttentionDiagnostics
from .engine import ChunkLoss, forward_backward
from .inputs import check_input
from .layer import DenseAttentionLayer, SABLayer
from .options import PassOptions
from .record import AttentionRecord
from .state import SABState


@dataclass
class SABOutput:
    """What one pass of ``SABLSTM.run`` (or ``forward_backward``) returns.

    Attributes:
        logits: (B, T, O) per-step outputs (detached after ``forward_backward``).
        record: the attention record (``record=True``), else None.
        stats: time spent in the index and the audit sums of this pass.
        queries: (S, B, d_k) the search queries of every attention step (``collect_queries=True``), else None.
        diagnostics: gap sums, slot norms and long-range attention (``diagnostics=True``), else None.
        loss: the loss (``forward_backward`` only), else None.
    """

    logits: torch.Tensor
    record: AttentionRecord | None
    stats: RetrievalStats
    queries: torch.Tensor | None = None
    diagnostics: AttentionDiagnostics | None = None
    loss: torch.Tensor | None = None


class SABLSTM(nn.Module):
    """LSTM with Sparse Attentive Backtracking: ``self.layer`` (an ``SABLayer``) and ``self.head``."""

    layer_class = SABLayer

    def __init__(self, config: SABConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.layer = self.layer_class(config, device=device, dtype=dtype)
        self.head = make_head(self.layer.output_size, config.head_hidden, config.output_size, device=device, dtype=dtype)
        # Runs saved before the layer existed hold "cell.*" and "scorer.*" at the top level.
        if hasattr(nn.Module, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(nest_layer_keys)
        else:  # torch releases before the public hook
            self._register_load_state_dict_pre_hook(nest_layer_keys, with_module=True)

    @property
    def retrieves(self) -> bool:
        """Whether attention steps ask an index for candidates (the dense baseline reads every slot)."""
        return self.layer.retrieves

    @property
    def retrieval(self) -> str:
        return self.layer.retrieval

    def set_retrieval(self, retrieval: str) -> None:
        """Search with another index from now on (``SABLayer.set_retrieval``)."""
        self.layer.set_retrieval(retrieval)

    def set_kernel(self, kernel: str) -> None:
        """Run the layer's steps on ``"auto"``, ``"python"`` or ``"compiled"`` (``SABLayer.set_kernel``)."""
        self.layer.set_kernel(kernel)

    def audit_skip_reason(self, retrieval: str | None = None) -> str | None:
        """Why retrieval audits cannot run (``SABLayer.audit_skip_reason``), or None when they can."""
        return self.layer.audit_skip_reason(retrieval)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Per-step logits (B, T, O) for inputs x (B, T, I); with ``return_attention`` also the record."""
        out = self.run(x, PassOptions(record=return_attention))
        return (out.logits, out.record) if return_attention else out.logits

    def run(self, x: torch.Tensor, options: PassOptions | None = None) -> SABOutput:
        """One pass over inputs x (B, T, I), with everything ``options`` asks it to measure or keep."""
        check_input(self, x, self.config.input_size)
        state = self.layer.initial_state(x.shape[0], options, device=x.device, dtype=x.dtype, steps=x.shape[1])
        features, state = self.layer(x, state)
        return self.output(self.head(features), state)

    def output(self, logits: torch.Tensor, state: SABState, loss: torch.Tensor | None = None) -> SABOutput:
        """The ``SABOutput`` of a pass that ended in ``state``."""
        recorder = state.recorder
        options = recorder.options
        queries = (recorder.stacked_queries(logits, logits.shape[0], self.config.attn_dim)
                   if options.collect_queries else None)
        record = recorder.attention_record(state.memory.times) if options.record else None
        return SABOutput(logits, record, recorder.stats, queries, recorder.diagnostics, loss)

    def stream(self, x: torch.Tensor, state: SABState | None = None) -> tuple[torch.Tensor, SABState]:
        """Logits (B, W, O) of one window x (B, W, I) of a stream, continuing ``state`` (None: a fresh one);
        returns them and the state after the window (``state.detach()`` before the next window cuts the
        gradient there, the memory carried as constants)."""
        features, state = self.layer(x, state)
        return self.head(features), state

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 1000, options: PassOptions | None = None) -> SABOutput:
        """``run`` without a graph, the sequence fed to the layer ``chunk`` steps at a time: memory holds the
        slots and the logits, never all T steps' features (evaluation at any length)."""
        check_input(self, x, self.config.input_size)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        state = self.layer.initial_state(x.shape[0], options, device=x.device, dtype=x.dtype, steps=x.shape[1])
        logits = [self.head(self.layer(x[:, a : a + chunk], state)[0]) for a in range(0, x.shape[1], chunk)]
        return self.output(torch.cat(logits, dim=1), state)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         chunk: int = 1000, chunk_loss: ChunkLoss | None = None,
                         options: PassOptions | None = None) -> SABOutput:
        """The loss of ``loss_fn(logits, y)`` and its gradient in every parameter's ``.grad`` (accumulated, as
        ``backward`` does), in memory that grows with the number of slots, not with T (``engine``).
        ``chunk_loss``: the loss split over chunks of steps (e.g. ``Task.chunk_loss``), to hold less."""
        check_input(self, x, self.config.input_size)
        return forward_backward(self, x, y, loss_fn, chunk, chunk_loss=chunk_loss, options=options)

    @torch.no_grad()
    def collect_memories(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the index held and was asked on inputs x (B, T, I): the MIPS problem of this model.

        Returns ``keys`` (B, N, d_k), the keys the index held (dot: k_i = W_k m_i), and ``queries``
        (S, B, d_k), what it was searched with (dot: q = W_q ĥ / sqrt(d_k)), one per attention step. Needs a
        scorer an index can serve (dot, cosine).
        """
        if not self.layer.scorer.supports_mips:
            raise ValueError(f"collect_memories needs the dot or cosine scorer, not {self.config.scorer!r}")
        check_input(self, x, self.config.input_size)
        state = self.layer.initial_state(x.shape[0], PassOptions(collect_queries=True), device=x.device,
                                         dtype=x.dtype, steps=x.shape[1])
        _, state = self.layer(x, state)
        return {"keys": self.layer.scorer.projection().key(state.memory.values()),
                "queries": state.recorder.stacked_queries(x, x.shape[0], self.config.attn_dim)}


class DenseAttentionLSTM(SABLSTM):
    """Baseline: the same LSTM and memory, dense softmax attention over every slot, full BPTT."""

    layer_class = DenseAttentionLayer


def make_head(features: int, hidden: int, outputs: int, device=None, dtype=None) -> nn.Module:
    """A linear head (``hidden`` = 0), or one hidden layer of ``hidden`` tanh units."""
    factory = {"device": device, "dtype": dtype}
    if not hidden:
        return nn.Linear(features, outputs, **factory)
    return nn.Sequential(nn.Linear(features, hidden, **factory), nn.Tanh(), nn.Linear(hidden, outputs, **factory))


def nest_layer_keys(_module, state_dict, prefix, *_args) -> None:
    """Map a state dict saved before ``SABLSTM.layer`` existed ("cell.*", "scorer.*") to the new names."""
    for key in list(state_dict):
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.split(".")[0] in ("cell", "scorer"):
            state_dict[prefix + "layer." + rest] = state_dict.pop(key)
