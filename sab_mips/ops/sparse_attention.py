"""One attention step over C candidate slots, forward and closed-form backward in a few batched ops.

    scores   a_i = score(query, m_i)          dot: q̃·m_i;  cosine: q·(W_k m_i) / |W_k m_i|
    weights  w   = sparsify(a)                relu: ReLU(a − δ) / (Σ ReLU(a − δ) + ε);  softmax: over the top K
    summary  s   = Σ_i w_i m_i

Autograd would run about 25 small ops forward and 35 backward for this per time step; here the forward
is a handful of batched ops and the backward is written out (below), so an attention step costs a few
kernel calls instead of dozens. The plain autograd path (``scorers`` projections + ``sparsify``) is the
slow twin: the tests compare outputs and gradients in float64 and run ``gradcheck``.

Backward, for the upstream gradient g_s (B, H):

    g_w_i   = m_i · g_s                       g_m_i  = w_i g_s + (score terms below)
    relu:     g_a_i = [a_i > δ] (g_w_i − Σ_j w_j g_w_j) / (S + ε),  and the (K+1)-th score, which sets δ,
              gets −Σ_i g_a_i (δ is differentiable, ``sparsify``)
    softmax:  g_a_i = w_i (g_w_i − Σ_j w_j g_w_j)
    dot:      g_m_i += g_a_i q̃,  g_q̃ = Σ_i g_a_i m_i
    cosine:   with k_i = W_k m_i, n_i = |k_i|, k̂_i = k_i / n_i:  g_q = Σ_i g_a_i k̂_i,
              g_k_i = (g_a_i q − k̂_i (k̂_i · g_a_i q)) / n_i,  g_m_i += W_kᵀ g_k_i,  g_W_k = Σ_i g_k_i m_iᵀ

Padding candidates (``valid`` False) get weight 0 and no gradient. Shapes: B batch, C candidates, H slot
size, d key size, K = k_top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparsify import LOW_N_MARGIN, softmax_topk_weights

NORM_FLOOR = 1e-12  # a vector of smaller norm is divided by this instead (cosine 0, no division by zero)


@dataclass(frozen=True)
class AttentionSpec:
    """What one fused attention step computes: the scorer (dot, cosine), the sparsifier (relu, softmax), K, ε,
    and the number of trailing exploration candidates that always take part in the softmax."""

    scorer: str
    sparsifier: str
    k: int
    eps: float
    explore: int = 0


def attend_forward(slots: torch.Tensor, query: torch.Tensor, key_weight: torch.Tensor | None,
                   valid: torch.Tensor | None, spec: AttentionSpec):
    """(summary (B, H), weights (B, C), scores (B, C), saved) for candidate slots (B, C, H).

    query: dot: q̃ (B, H); cosine: q (B, d) with τ folded in, and key_weight W_k (d, H). valid (B, C) bool,
    or None when every candidate is a real slot. ``saved`` is what ``attend_backward`` needs.
    """
    if spec.scorer == "dot":
        unit = norms = None
        scores = (slots * query.unsqueeze(1)).sum(dim=2)
    else:
        keys = slots @ key_weight.t()  # (B, C, d)
        norms = keys.norm(dim=2, keepdim=True)
        unit = keys / norms.clamp(min=NORM_FLOOR)
        scores = (unit * query.unsqueeze(1)).sum(dim=2)
    if spec.sparsifier == "relu":
        weights, active, total, delta_index = _relu_weights(scores, valid, spec.k, spec.eps)
    else:
        weights = softmax_topk_weights(scores, spec.k, valid, spec.explore, all_valid=valid is None)
        active = total = delta_index = None
    summary = (weights.unsqueeze(2) * slots).sum(dim=1)
    saved = (slots, query, key_weight, weights, active, total, delta_index, unit, norms)
    return summary, weights, scores, saved


def attend_backward(grad_summary: torch.Tensor, saved, spec: AttentionSpec):
    """Gradients (slots (B, C, H), query, key_weight or None) of ``attend_forward`` for g_s (B, H)."""
    slots, query, key_weight, weights, active, total, delta_index, unit, norms = saved
    g_w = (slots * grad_summary.unsqueeze(1)).sum(dim=2)  # (B, C)
    g_slots = weights.unsqueeze(2) * grad_summary.unsqueeze(1)  # (B, C, H)
    centred = g_w - (g_w * weights).sum(dim=1, keepdim=True)
    if spec.sparsifier == "relu":
        g_a = centred / (total + spec.eps) * active
        g_a = g_a.scatter_add(1, delta_index, -g_a.sum(dim=1, keepdim=True))  # δ is the (K+1)-th score
    else:
        g_a = weights * centred
    if spec.scorer == "dot":
        g_slots = g_slots + g_a.unsqueeze(2) * query.unsqueeze(1)
        return g_slots, (g_a.unsqueeze(2) * slots).sum(dim=1), None
    g_query = (g_a.unsqueeze(2) * unit).sum(dim=1)  # (B, d)
    g_unit = g_a.unsqueeze(2) * query.unsqueeze(1)  # (B, C, d)
    g_keys = (g_unit - unit * (unit * g_unit).sum(dim=2, keepdim=True)) / norms
    g_keys = torch.where(norms < NORM_FLOOR, g_unit / NORM_FLOOR, g_keys)  # clamped norm: a plain division
    g_slots = g_slots + g_keys @ key_weight
    g_key_weight = g_keys.reshape(-1, g_keys.shape[2]).t().mm(slots.reshape(-1, slots.shape[2]))  # Σ_bc g_k mᵀ
    return g_slots, g_query, g_key_weight


def _relu_weights(scores: torch.Tensor, valid: torch.Tensor | None, k: int, eps: float):
    """The paper's sparsifier (``sparsify.sparse_attention_weights``) and what its backward needs: the
    active entries (a > δ), the sum S, and the index of the score that sets δ."""
    C = scores.shape[1]
    if valid is None:
        if C > k:
            top = scores.topk(k + 1, dim=1)
            delta, delta_index = top.values[:, k:], top.indices[:, k:]
        else:  # N <= K: δ = lowest score − margin, set by the lowest slot
            low = scores.min(dim=1, keepdim=True)
            delta, delta_index = low.values - LOW_N_MARGIN, low.indices
        active = scores > delta
    else:
        lowest = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True)
        delta, delta_index = lowest.values - LOW_N_MARGIN, lowest.indices
        if C > k:
            top = scores.masked_fill(~valid, float("-inf")).topk(k + 1, dim=1)
            enough = valid.sum(dim=1, keepdim=True) > k
            delta = torch.where(enough, top.values[:, k:], delta)
            delta_index = torch.where(enough, top.indices[:, k:], delta_index)
        delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))  # rows with no valid slot
        active = (scores > delta) & valid
    shifted = (scores - delta) * active
    total = shifted.sum(dim=1, keepdim=True)
    return shifted / (total + eps), active, total, delta_index


class SparseAttention(torch.autograd.Function):
    """``attend_forward`` / ``attend_backward`` on plain tensors: (summary, weights, scores).

    The model reads its slots through ``SlotMemory.attend``, which runs the same two functions on the
    slot buffer; this form is for ``gradcheck`` and for callers that hold the candidate slots themselves.
    Weights and scores are returned detached.
    """

    @staticmethod
    def forward(ctx, slots, query, key_weight, valid, spec: AttentionSpec):
        summary, weights, scores, saved = attend_forward(slots, query, key_weight, valid, spec)
        ctx.saved, ctx.spec = saved, spec
        ctx.mark_non_differentiable(weights, scores)
        return summary, weights, scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_summary, _grad_weights, _grad_scores):
        g_slots, g_query, g_key_weight = attend_backward(grad_summary, ctx.saved, ctx.spec)
        return g_slots, g_query, g_key_weight, None, None
