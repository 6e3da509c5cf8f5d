"""Attention scorers: a_i = score(ĥ_t, m_i) between the provisional state and each memory slot.

Shapes: B batch, C slots scored per query, H hidden size, d_k = attn_dim.

* ``dot``      a_i = (W_q ĥ)·(W_k m_i) / sqrt(d_k): the inner product of the query q = W_q ĥ / sqrt(d_k)
               with the key k_i = W_k m_i (both d_k-wide), and equally of q̃ = W_kᵀ q (H-wide) with the raw
               slot m_i. MIPS-servable; the paper's.
* ``cosine``   a_i = τ · cos(W_q ĥ, W_k m_i), τ = exp(log_temperature) learned (initial value
               ``temperature``). MIPS-servable: the index holds unit keys k̂_i = W_k m_i / |W_k m_i| and is
               searched with q = τ · W_q ĥ / |W_q ĥ| (with unit keys MIPS is angular nearest-neighbour
               search). Unlike ``dot`` it cannot prefer a slot for its norm alone.
* ``additive`` a_i = vᵀ tanh(W_q ĥ + W_k m_i), an MLP over both (exact retrieval only).
* ``official`` a_i = wᵀ tanh([ĥ ; m_i]), kept to reproduce the released code. tanh acts element-wise, so
               a_i = w_1ᵀ tanh(ĥ) + w_2ᵀ tanh(m_i): the first term is the same for every slot and cancels in
               a_i − δ, so this attention ignores the current state entirely.

Every scorer's ``forward(h, slots)`` is the obvious formula (the reference twin uses it). The MIPS-servable
ones also give a ``projection()`` for one forward pass: its ``query(ĥ)`` is what the index is searched
with, ``key(m)`` what it holds, and ``scores(query, slots)`` the exact scores of candidate slots, in the
graph (``query(ĥ)·key(m_i)`` = ``forward``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from ..ops.sparse_attention import NORM_FLOOR, unit_key


class Scorer(nn.Module, ABC):
    """Base class: ``forward(h (B, H), slots (B, C, H)) -> scores (B, C)``."""

    supports_mips = False

    @abstractmethod
    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor: ...


class DotScorer(Scorer):
    supports_mips = True

    def __init__(self, hidden_size: int, attn_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(hidden_size, attn_dim, bias=False, **factory)  # W_q
        self.key_proj = nn.Linear(hidden_size, attn_dim, bias=False, **factory)  # W_k
        self.scale = 1.0 / math.sqrt(attn_dim)

    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(h)  # (B, d_k)
        keys = self.key_proj(slots)  # (B, C, d_k)
        return torch.einsum("bd,bcd->bc", q, keys) * self.scale

    def projection(self) -> "DotProjection":
        return DotProjection(self.query_proj.weight * self.scale, self.key_proj.weight)


class DotProjection:
    """The dot scorer within one pass: W_q / sqrt(d_k) and W_k, taken once (both in the graph)."""

    def __init__(self, query_weight: torch.Tensor, key_weight: torch.Tensor) -> None:
        self.query_weight, self.key_weight = query_weight, key_weight  # (d_k, H) each

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """q = W_q ĥ / sqrt(d_k), (B, d_k)."""
        return h @ self.query_weight.t()

    def key(self, slots: torch.Tensor) -> torch.Tensor:
        """k_i = W_k m_i, (..., d_k)."""
        return slots @ self.key_weight.t()

    def scores(self, query: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """q·W_k m_i for slots (B, C, H), computed as q̃·m_i with q̃ = W_kᵀ q: one (B, H) vector per step
        instead of projecting C slots."""
        # multiply-and-sum, not bmm: for a handful of candidates it is ~4x cheaper on CPU, backward included
        return (slots * (query @ self.key_weight).unsqueeze(1)).sum(dim=2)

    def fused_inputs(self, query: torch.Tensor) -> tuple[torch.Tensor, None]:
        """What the fused attention step (``ops.sparse_attention``, scorer dot) takes: q̃ = W_kᵀ q (B, H)."""
        return query @ self.key_weight, None


class CosineScorer(Scorer):
    supports_mips = True

    def __init__(self, hidden_size: int, attn_dim: int, temperature: float = 5.0, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(hidden_size, attn_dim, bias=False, **factory)  # W_q
        self.key_proj = nn.Linear(hidden_size, attn_dim, bias=False, **factory)  # W_k
        self.initial_temperature = temperature
        self.log_temperature = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.query_proj.reset_parameters()
        self.key_proj.reset_parameters()
        with torch.no_grad():
            self.log_temperature.fill_(math.log(self.initial_temperature))

    def extra_repr(self) -> str:
        return f"initial temperature={self.initial_temperature}"

    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        q = _unit(self.query_proj(h))  # (B, d_k)
        keys = _unit(self.key_proj(slots))  # (B, C, d_k)
        return torch.einsum("bd,bcd->bc", q, keys) * self.log_temperature.exp()

    def projection(self) -> "CosineProjection":
        return CosineProjection(self.query_proj.weight, self.key_proj.weight, self.log_temperature.exp())


class CosineProjection:
    """The cosine scorer within one pass: W_q, W_k and τ (in the graph)."""

    def __init__(self, query_weight: torch.Tensor, key_weight: torch.Tensor, temperature: torch.Tensor) -> None:
        self.query_weight, self.key_weight, self.temperature = query_weight, key_weight, temperature

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """q = τ · W_q ĥ / |W_q ĥ|, (B, d_k)."""
        return _unit(h @ self.query_weight.t()) * self.temperature

    def key(self, slots: torch.Tensor) -> torch.Tensor:
        """k̂_i = W_k m_i / |W_k m_i|, (..., d_k); the same function the slot memory's key cache uses."""
        return unit_key(slots, self.key_weight)[0]

    def scores(self, query: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return (self.key(slots) * query.unsqueeze(1)).sum(dim=2)

    def fused_inputs(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the fused attention step (``ops.sparse_attention``, scorer cosine) takes: q and W_k."""
        return query, self.key_weight


def _unit(v: torch.Tensor) -> torch.Tensor:
    """v / |v| along the last dimension (a zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=NORM_FLOOR)


class AdditiveScorer(Scorer):
    def __init__(self, hidden_size: int, attn_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(hidden_size, attn_dim, **factory)  # W_q (with the MLP's bias)
        self.key_proj = nn.Linear(hidden_size, attn_dim, bias=False, **factory)  # W_k
        self.v = nn.Linear(attn_dim, 1, bias=False, **factory)

    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.query_proj(h).unsqueeze(1) + self.key_proj(slots))  # (B, C, d_k)
        return self.v(hidden).squeeze(2)


class OfficialScorer(Scorer):
    def __init__(self, hidden_size: int, attn_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.w = nn.Linear(2 * hidden_size, 1, bias=False, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([h.unsqueeze(1).expand(-1, slots.shape[1], -1), slots], dim=2)  # (B, C, 2H)
        return self.w(torch.tanh(pairs)).squeeze(2)


SCORER_CLASSES: dict[str, type[Scorer]] = {
    "dot": DotScorer,
    "cosine": CosineScorer,
    "additive": AdditiveScorer,
    "official": OfficialScorer,
}


def make_scorer(name: str, hidden_size: int, attn_dim: int, temperature: float | None = None, device=None,
                dtype=None) -> Scorer:
    """The scorer called ``name``; ``temperature`` is the cosine scorer's initial τ (None: its default)."""
    if name not in SCORER_CLASSES:
        raise ValueError(f"unknown scorer {name!r}; valid choices: {', '.join(SCORER_CLASSES)}")
    if name == "cosine" and temperature is not None:
        return CosineScorer(hidden_size, attn_dim, temperature, device=device, dtype=dtype)
    return SCORER_CLASSES[name](hidden_size, attn_dim, device=device, dtype=dtype)
