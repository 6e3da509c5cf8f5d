"""The slow, obvious twins of the sparsifiers (``sab_mips.ops.sparsify``): one row at a time, the K best by
a full sort. Only the tests use them: the library's sparsifiers must match their values and gradients."""
from __future__ import annotations

import torch

from sab_mips.ops.sparsify import LOW_N_MARGIN


def sparse_attention_weights_reference(scores: torch.Tensor, k: int, eps: float = 1e-7) -> torch.Tensor:
    """The twin of ``sparse_attention_weights`` (the paper's ReLU rule): δ from a full sort of each row.

    Padding must be given as ``-inf`` scores.
    """
    rows = []
    for row in scores:
        valid = torch.isfinite(row)
        values = row[valid].sort(descending=True).values
        out = torch.zeros_like(row)
        if len(values):
            delta = values[k] if len(values) > k else values[-1] - LOW_N_MARGIN
            shifted = torch.relu(row[valid] - delta)
            out = out.masked_scatter(valid, shifted / (shifted.sum() + eps))
        rows.append(out)
    return torch.stack(rows)


def softmax_topk_weights_reference(scores: torch.Tensor, k: int, explore: int = 0) -> torch.Tensor:
    """The twin of ``softmax_topk_weights``: padding as ``-inf`` scores; the last ``explore`` columns always
    take part."""
    rows = []
    searched = scores.shape[1] - explore
    for row in scores:
        out = torch.zeros_like(row)
        valid = torch.isfinite(row[:searched]).nonzero().flatten()
        chosen = valid[row[valid].sort(descending=True).indices[:k]]
        chosen = torch.cat([chosen, searched + torch.isfinite(row[searched:]).nonzero().flatten()])
        if len(chosen):
            out = out.index_put((chosen,), torch.softmax(row[chosen], dim=0))
        rows.append(out)
    return torch.stack(rows)
