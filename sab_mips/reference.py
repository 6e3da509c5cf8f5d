"""The slow, obvious twin of ``SABLSTM`` and ``DenseAttentionLSTM``: the reference the tests trust.

One plain loop over time steps with the model's own parameters: the memory is a Python list of slot
tensors stacked in full at every attention step, every slot is scored with the scorer's textbook formula,
and the sparsifier is the row-by-row ``sparse_attention_weights_reference``. It costs O(N) time and graph
memory per step; the fast path must match its outputs and gradients.
"""
from __future__ import annotations

import torch

from .sab import DenseAttentionLSTM, SABLSTM
from .sparsify import sparse_attention_weights_reference


def sab_forward_reference(model: SABLSTM, x: torch.Tensor) -> torch.Tensor:
    """Per-step logits (B, T, O) of ``model`` on x (B, T, I), computed the obvious way."""
    cfg = model.config
    dense = isinstance(model, DenseAttentionLSTM)
    B, T, _ = x.shape
    h = c = x.new_zeros(B, cfg.hidden_size)
    slots: list[torch.Tensor] = []
    features = []
    for t in range(T):
        if not dense and t % cfg.k_trunc == 0:
            h, c = h.detach(), c.detach()
        h, c = model.cell(x[:, t], (h, c))
        s = torch.zeros_like(h)
        if t % cfg.attend_every == 0 and slots:
            memory = torch.stack(slots, dim=1)  # (B, N, H), the whole memory, in the graph
            scores = model.scorer(h, memory)  # (B, N)
            if dense:
                weights = torch.softmax(scores, dim=1)
            else:
                weights = sparse_attention_weights_reference(scores, cfg.k_top, cfg.eps)
            s = (weights.unsqueeze(2) * memory).sum(dim=1)
            h = h + s
        features.append(torch.cat([h, s], dim=1))
        if (t + 1) % cfg.k_att == 0:
            slots.append(h)
    return model.head(torch.stack(features, dim=1))
