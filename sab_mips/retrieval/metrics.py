"""How good a retrieval is: recall@K and attention mass recovered, the one definition of each.

Shapes: Q queries (or B sequences), K = k_top, C candidates returned per query.

* **recall@K** = |approx top-K ∩ exact top-K| / K, the approx top-K being the K best returned candidates
  by their exact scores (K becomes N when a sequence holds fewer slots).
* **mass recovered** = Σ_{i ∈ approx selection} ReLU(a_i − δ) / Σ_{j ∈ exact top-K} ReLU(a_j − δ), with δ
  the exact threshold (the (K+1)-th score of all slots, ``sparsity_threshold``) and the approx selection
  the slots with non-zero approximate weight: the share of the exact sparse attention mass (before
  normalisation) that the approximate step still puts on the right slots.

Ties: memories hold many equal slots (a copy-task model writes nearly the same state through a run of
blanks), and which of several tied slots is "the" top-K is arbitrary. So membership is by score, not by
id: a candidate counts as an exact top-K slot when its score reaches the exact K-th score, up to
``TIE_RTOL`` times the scale of the row's rounding. That scale is the size of the terms a score sums,
|q|·max_i |k_i| (a bound on every score of the row; ``score_scale``), when the caller passes it (``scale``).
Otherwise it is the larger of |K-th score| and |best score|. (Measured: a K-th score of −0.00975 on the
copy model at T=10³, computed by two exact searches, differed by 2·10⁻⁷; and in the demo's first updates a
sequence's only slot scored 0.0054303 in the model and 0.0054304 in the exact search, a cosine of 0.001 at
temperature 5, which only the |q|·|k| = 5 scale calls a tie.)
Without ties the two definitions agree.

Example:
    >>> exact = torch.tensor([[3.0, 2.0, 1.0]])          # exact top-3 scores, best first
    >>> recall_at_k(torch.tensor([[3.0, 1.0, 0.5]]), exact).tolist()
    [0.6666666865348816]
"""
from __future__ import annotations

import torch

from ..ops.sparsify import sparsity_threshold

TIE_RTOL = 1e-5  # scores this close (relative to the row's scale) to the exact K-th score count as reaching it


def recall_at_k(found: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Recall per query (Q,): ``found`` (Q, K') exact scores of the K' best returned slots (-inf pads);
    ``exact`` (Q, K) the true top-K scores, best first (-inf pads when a sequence holds fewer than K);
    ``scale`` (Q,) optional, |q|·max_i |k_i| of each query (the rounding scale, see the module docstring)."""
    count = torch.isfinite(exact).sum(dim=1)  # min(K, N) per query
    kth = exact.gather(1, (count - 1).clamp(min=0).unsqueeze(1))  # (Q, 1) the score to reach
    rounding_scale = torch.maximum(kth.abs(), exact[:, :1].abs())
    if scale is not None:
        rounding_scale = torch.maximum(rounding_scale, scale.to(exact.dtype).unsqueeze(1))
    bar = kth - TIE_RTOL * rounding_scale
    hits = (found >= bar).sum(dim=1).clamp(max=count)
    return hits / count.clamp(min=1)


def score_scale(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """|q_i|·max_j |k_j| (Q,), the j over the keys of query i's sequence: the size of the terms its scores
    sum, which their rounding scales with (``recall_at_k``'s ``scale``).

    queries (Q, d); keys (S, N, d), S sequences; query i belongs to sequence i mod S (Q a multiple of S).
    """
    key_norms = keys.norm(dim=2).amax(dim=1)  # (S,)
    return queries.norm(dim=1) * key_norms.repeat(queries.shape[0] // keys.shape[0])


def mass_recovered(cand_scores: torch.Tensor, selected: torch.Tensor, exact: torch.Tensor, k: int) -> torch.Tensor:
    """Attention mass recovered per query (B,), in [0, 1].

    cand_scores (B, C) exact scores of the candidates; selected (B, C) bool, the candidates with non-zero
    approximate weight; exact (B, K+1) the true top-(K+1) scores, best first (-inf pads).
    """
    valid = torch.isfinite(exact)
    finite = exact.masked_fill(~valid, 0.0)
    delta = sparsity_threshold(finite, k, valid)  # (B, 1), the exact δ
    exact_mass = (torch.relu(finite - delta) * valid)[:, :k].sum(dim=1)
    kept_mass = (torch.relu(cand_scores - delta) * selected).sum(dim=1)
    return (kept_mass / exact_mass.clamp(min=torch.finfo(exact_mass.dtype).tiny)).clamp(max=1.0)


def best_k(cand_scores: torch.Tensor, cand_ids: torch.Tensor, k: int) -> torch.Tensor:
    """The K best candidate scores (B, K) by exact score, -inf where a candidate is padding (id -1)."""
    masked = cand_scores.masked_fill(cand_ids < 0, float("-inf"))
    return masked.topk(min(k, masked.shape[1]), dim=1).values
