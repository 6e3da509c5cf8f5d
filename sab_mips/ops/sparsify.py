"""The SAB sparsifier: keep the K largest attention scores, renormalise (step 4 of the algorithm in
``sab_mips/model/layer.py``).

For one query with scores a_1..a_C over C candidate slots:

    δ   = the (K+1)-th largest score                      (when more than K slots exist)
    w_i = ReLU(a_i − δ) / (Σ_j ReLU(a_j − δ) + ε)

so exactly K weights are non-zero (barring ties at δ). Two choices the formula leaves open, fixed here:

* **δ is differentiable**: the weights are a function of the K+1 largest scores, and their gradient is
  the true gradient of that function (``gradcheck`` holds). The (K+1)-th slot has weight 0 and adds
  nothing to the summary; it receives gradient only through its score, which sets the threshold. All
  slots outside the top K+1 receive exactly zero gradient. A consequence used by retrieval: only the top
  K+1 scores matter, so scoring K+1 candidates in the graph gives exactly the gradients of scoring all.
  Why not detach δ: w is invariant to adding a constant to every score, and the true gradient respects
  that (it depends on score differences only). With δ detached, the gradient gains a spurious common
  mode along the mean slot; since SAB's slots accumulate summaries and grow in norm, that term grows
  with them, and on the copy task at T=100 it overflowed float32 within 200 updates (measured).
* **When N ≤ K** (not enough slots to have a (K+1)-th), δ = min_i a_i − 1: every stored slot gets a
  positive weight, the lowest one included, and the weights are finite, non-negative and sum to
  Σ/(Σ + ε) ≈ 1. With N = 0 every weight is zero and the summary is zero.

Invalid candidates (padding from a retrieval that found fewer than C slots) are marked by ``-inf``
scores or an explicit ``valid`` mask and always get weight 0.

Shapes: B queries (the batch), C candidates, K = k_top.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

LOW_N_MARGIN = 1.0  # δ = min score − LOW_N_MARGIN when a query has N ≤ K valid slots


class ReluWeights(NamedTuple):
    """The ReLU sparsifier's weights and what its closed-form backward reuses (``sparse_attention``)."""

    weights: torch.Tensor  # (B, C)
    active: torch.Tensor  # (B, C) bool: a_i > δ (and valid), the entries with a non-zero weight
    total: torch.Tensor  # (B, 1): S = Σ_i ReLU(a_i − δ)
    source: torch.Tensor  # (B, 1) long: the column whose score sets δ (the (K+1)-th, or the lowest when N ≤ K)


def threshold_and_source(scores: torch.Tensor, k: int,
                         valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ (B, 1), differentiable; the column (B, 1) of the score that sets it, which takes all of δ's
    gradient, even at a tie). See the module docstring for the N ≤ K rule; a row with no valid entry gets
    δ = +inf.

    scores: (B, C), finite; valid: (B, C) bool, or None when every entry is a real slot.
    """
    if valid is None:
        if scores.shape[1] > k:
            top = scores.topk(k + 1, dim=1)
            return top.values[:, k:], top.indices[:, k:]
        low = scores.min(dim=1, keepdim=True)
        return low.values - LOW_N_MARGIN, low.indices
    low = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True)
    delta, source = low.values - LOW_N_MARGIN, low.indices
    if scores.shape[1] > k:
        top = scores.masked_fill(~valid, float("-inf")).topk(k + 1, dim=1)
        enough = valid.sum(dim=1, keepdim=True) > k
        delta = torch.where(enough, top.values[:, k:], delta)
        source = torch.where(enough, top.indices[:, k:], source)
    return delta, source


def sparsity_threshold(scores: torch.Tensor, k: int, valid: torch.Tensor) -> torch.Tensor:
    """δ per query, shape (B, 1), differentiable (``threshold_and_source``). scores: (B, C); valid: (B, C) bool."""
    return threshold_and_source(scores, k, valid)[0]


def relu_sparsify(scores: torch.Tensor, k: int, eps: float, valid: torch.Tensor | None = None) -> ReluWeights:
    """w = ReLU(a − δ) / (Σ ReLU(a − δ) + ε) of finite scores (B, C), with the active entries, the sum and
    the source of δ: the one implementation that the plain path (through autograd) and the fused step (whose
    backward reuses these outputs) both run.

    Entries outside ``valid`` (B, C) take no part, neither in δ nor in the sum; None: every entry is a slot.
    """
    delta, source = threshold_and_source(scores, k, valid)
    if valid is None:
        active = scores > delta
    else:
        # a row with no valid slot has δ = +inf; a finite δ keeps inf − inf (NaN) out, and it has no active entry
        delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
        active = (scores > delta) & valid
    # (a − δ)·[a > δ] is ReLU(a − δ), bit for bit, and so is its gradient; the mask is what the backward reuses
    shifted = (scores - delta) * active
    total = shifted.sum(dim=1, keepdim=True)
    return ReluWeights(shifted / (total + eps), active, total, source)


def sparse_attention_weights(
    scores: torch.Tensor, k: int, eps: float = 1e-7, valid: torch.Tensor | None = None, all_valid: bool = False
) -> torch.Tensor:
    """Sparse attention weights (B, C) from scores (B, C): at most K non-zero per row (``relu_sparsify``).

    Padding is marked by ``valid`` (B, C) or, without it, by ``-inf`` scores. ``all_valid=True`` promises
    that every entry is a real, finite score, which skips the masking.

    Example::

        >>> w = sparse_attention_weights(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), k=2)
        >>> [round(v, 3) for v in w[0].tolist()]
        [0.667, 0.0, 0.333, 0.0]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if valid is None and all_valid:  # the hot path of SAB with a full candidate set: no masks
        return relu_sparsify(scores, k, eps).weights
    if valid is None:
        valid = torch.isfinite(scores)
    # Padding is replaced by a finite value so that no inf/NaN can enter the backward pass.
    return relu_sparsify(scores.masked_fill(~valid, 0.0), k, eps, valid).weights


def softmax_topk_weights(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None,
                         explore: int = 0, all_valid: bool = False) -> torch.Tensor:
    """A softmax over the K largest valid scores of each row (B, C); every other entry gets weight 0.

    Exactly min(K, valid count) non-zero weights, as with the ReLU rule, but the gradient with respect to
    the scores is the softmax's, bounded whatever the gaps between scores (no 1/Σ(a − δ) factor near ties).
    Padding is marked by ``valid`` (B, C) or, without it, by ``-inf`` scores; a row with no valid entry
    gets all zeros. With ``explore`` = R > 0 the last R columns (exploration candidates) always take part
    in the softmax, and the K largest are chosen among the first C − R. ``all_valid=True`` promises that
    every entry is a real, finite score, which skips the masking (the same result, bit for bit).

    Example::

        >>> w = softmax_topk_weights(torch.tensor([[2.0, 0.0, 1.0, -5.0]]), k=2)
        >>> [round(v, 3) for v in w[0].tolist()]
        [0.731, 0.0, 0.269, 0.0]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if all_valid:  # the hot path of SAB with a full candidate set: no padding to keep out
        values, index = top_k_and_explored(scores, k, explore)
        return torch.zeros_like(scores).scatter(1, index, torch.softmax(values, dim=1))
    # without ``valid``, padding is already -inf: nothing to mask
    masked = scores if valid is None else scores.masked_fill(~valid, float("-inf"))
    values, index = top_k_and_explored(masked, k, explore)
    keep = torch.isfinite(values)
    # padding becomes the lowest finite value: exp() gives exact zeros, and a row with no valid entry gets
    # finite uniform weights that ``keep`` then zeroes (no inf or NaN enters the backward pass)
    logits = torch.where(keep, values, torch.finfo(scores.dtype).min)
    weights = torch.softmax(logits, dim=1) * keep
    return torch.zeros_like(scores).scatter(1, index, weights)


def top_k_and_explored(masked: torch.Tensor, k: int, explore: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and column indices (B, K' + R) of the K largest of the first C − R scores and of the last R
    (padding as -inf); the entries a top-K softmax with R exploration candidates runs over."""
    searched = masked.shape[1] - explore
    top = masked[:, :searched].topk(min(k, searched), dim=1)
    if not explore:
        return top.values, top.indices
    explored = torch.arange(searched, masked.shape[1], device=masked.device).expand(masked.shape[0], -1)
    return torch.cat([top.values, masked[:, searched:]], dim=1), torch.cat([top.indices, explored], dim=1)
