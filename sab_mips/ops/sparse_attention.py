"""One attention step over C candidate slots, forward and closed-form backward in a few batched ops.

    scores   a_i = score(query, m_i)          dot: q̃·m_i;  cosine: q·(W_k m_i) / |W_k m_i|
    weights  w   = sparsify(a)                relu: ReLU(a − δ) / (Σ ReLU(a − δ) + ε);  softmax: over the top K
    summary  s   = Σ_i w_i m_i

Autograd would run about 25 small ops forward and 35 backward for this per time step; here the forward
is a handful of batched ops and the backward is written out (below), so an attention step costs a few
kernel calls instead of dozens. The plain autograd path (``scorers`` projections + ``sparsify``) is the
slow twin: the tests compare outputs and gradients in float64 and run ``gradcheck``.
Both paths run the same sparsifiers (``sparsify.relu_sparsify``, ``sparsify.softmax_topk_weights``); the
backward below reuses what the ReLU one returns (the active entries, the sum S, the column of δ's score).

Backward, for the upstream gradient g_s (B, H):

    g_w_i   = m_i · g_s                       g_m_i  = w_i g_s + (score terms below)
    relu:     g_a_i = [a_i > δ] (g_w_i − Σ_j w_j g_w_j) / (S + ε),  and the (K+1)-th score, which sets δ,
              gets −Σ_i g_a_i (δ is differentiable, ``sparsify``)
    softmax:  g_a_i = w_i (g_w_i − Σ_j w_j g_w_j)
    dot:      g_m_i += g_a_i q̃,  g_q̃ = Σ_i g_a_i m_i
    cosine:   with k_i = W_k m_i, n_i = |k_i|, k̂_i = k_i / n_i:  g_q = Σ_i g_a_i k̂_i,
              g_k_i = (g_a_i q − k̂_i (k̂_i · g_a_i q)) / n_i,  g_m_i += W_kᵀ g_k_i,  g_W_k = Σ_i g_k_i m_iᵀ

Cosine keys given (``unit_keys``): the slot memory can keep every slot's unit key k̂_i, computed once when
the slot is written, instead of projecting the C candidates again at every step (three (B·C, H)×(H, d)
products per step, forward and backward, about half of the node's time at B=64, H=128, d=64). The step
then returns the gradient of the unit keys, g_k̂_i = g_a_i q, and the memory sums it per slot and takes it
through the normalisation and W_k once, when the slot's write runs backward (``unit_backward``): the same
gradient, since both maps are linear in g_k̂.

Padding candidates (``valid`` False) get weight 0 and no gradient. Shapes: B batch, C candidates, H slot
size, d key size, K = k_top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparsify import relu_sparsify, softmax_topk_weights

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
                   valid: torch.Tensor | None, spec: AttentionSpec, unit_keys: torch.Tensor | None = None):
    """(summary (B, H), weights (B, C), scores (B, C), saved) for candidate slots (B, C, H).

    query: dot: q̃ (B, H); cosine: q (B, d) with τ folded in, and key_weight W_k (d, H). valid (B, C) bool,
    or None when every candidate is a real slot. unit_keys (B, C, d): the cosine candidates' k̂_i, when the
    caller keeps them (then ``attend_backward`` returns their gradient instead of W_k's). ``saved`` is what
    ``attend_backward`` needs.
    """
    if spec.scorer == "dot":
        unit = norms = None
        scores = (slots * query.unsqueeze(1)).sum(dim=2)
    else:
        if unit_keys is None:
            unit, norms = unit_key(slots, key_weight)  # (B, C, d), (B, C, 1)
        else:
            unit, norms = unit_keys, None
        scores = (unit * query.unsqueeze(1)).sum(dim=2)
    if spec.sparsifier == "relu":
        weights, active, total, delta_index = relu_sparsify(scores, spec.k, spec.eps, valid)
    else:
        weights = softmax_topk_weights(scores, spec.k, valid, spec.explore, all_valid=valid is None)
        active = total = delta_index = None
    summary = (weights.unsqueeze(2) * slots).sum(dim=1)
    saved = (slots, query, key_weight, weights, active, total, delta_index, unit, norms)
    return summary, weights, scores, saved


def attend_backward(grad_summary: torch.Tensor, saved, spec: AttentionSpec):
    """Gradients (slots (B, C, H), query, key_weight or None, unit keys or None) of ``attend_forward`` for
    g_s (B, H). Cosine with the unit keys given: the unit keys' gradient (B, C, d) and no W_k gradient, and
    the slots' gradient without the score terms (they reach the slots through the keys, ``unit_backward``)."""
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
        return g_slots, (g_a.unsqueeze(2) * slots).sum(dim=1), None, None
    g_query = (g_a.unsqueeze(2) * unit).sum(dim=1)  # (B, d)
    g_unit = g_a.unsqueeze(2) * query.unsqueeze(1)  # (B, C, d)
    if norms is None:  # unit keys given: the caller takes g_k̂ through the normalisation and W_k
        return g_slots, g_query, None, g_unit
    g_keys = unit_backward(g_unit, unit, norms)
    g_slots = g_slots + g_keys @ key_weight
    g_key_weight = g_keys.reshape(-1, g_keys.shape[2]).t().mm(slots.reshape(-1, slots.shape[2]))  # Σ_bc g_k mᵀ
    return g_slots, g_query, g_key_weight, None


def unit_key(slots: torch.Tensor, key_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k̂ = k / max(|k|, floor), |k|) of the keys k = W_k m of slots (..., H): what the cosine scorer scores."""
    keys = slots @ key_weight.t()
    norms = keys.norm(dim=-1, keepdim=True)
    return keys / norms.clamp(min=NORM_FLOOR), norms


def unit_backward(g_unit: torch.Tensor, unit: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """The gradient of k from that of k̂ = k / max(|k|, floor): (g − k̂ (k̂·g)) / |k|, or g / floor where the
    norm was clamped. Linear in g, so a sum of gradients of one key can be taken through it once."""
    g_keys = (g_unit - unit * (unit * g_unit).sum(dim=-1, keepdim=True)) / norms
    return torch.where(norms < NORM_FLOOR, g_unit / NORM_FLOOR, g_keys)  # clamped norm: a plain division
