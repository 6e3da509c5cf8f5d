"""``alsh``: asymmetric LSH for MIPS (Shrivastava & Li, NIPS 2014) with L2-LSH buckets, in torch.

Shapes: B sequences, n keys per ``add``, N keys per sequence, d key dimension, k results,
L tables of K hashes each, m norm-power terms.

Transforms (M_b = the capped max key norm of sequence b, see ``indexes._hashing``)::

    P(x) = [ x' ; ‖x'‖² ; ‖x'‖⁴ ; ... ; ‖x'‖^(2^m) ]   with x' = U·x / M_b   (so ‖x'‖ <= U < 1)
    Q(q) = [ q/‖q‖ ; 1/2 ; ... ; 1/2 ]                                         (m halves)

so that ‖Q(q) − P(x)‖² = 1 + m/4 − 2·(U/M_b)·qᵀx/‖q‖ + ‖x'‖^(2^(m+1)): for small ‖x'‖^(2^(m+1))
the L2 nearest neighbour of Q(q) is the inner-product maximiser. Hash (L2-LSH, Datar et al. 2004)::

    h(v) = floor((aᵀv + b) / r),   a ~ N(0, I_{d+m}),  b ~ U[0, r)

K hashes concatenated form a table's bucket (mixed into one code in [0, 2^31) by a random linear map
modulo 2^31 − 1); L independent tables. Candidates are the union of the query's buckets, re-ranked by
the true inner product. ``probes`` (search time) adds, per table, the buckets one step across the
``probes`` hash boundaries nearest to the query (multi-probe LSH, Lv et al. 2007).
``seed`` fixes a, b and the mixing map: equal seeds give identical results. ``bucket`` > 0 lengthens
K with N (K = max(K, ceil(log(N/bucket)/log(1/p2))), p2 the collision probability of an orthogonal
pair at distance sqrt(1 + m/4)) so that candidates grow sublinearly; see ``indexes._hashing``.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("alsh:m=3,U=0.83,r=2.5,K=8,L=16")
    >>> index.reset(batch_size=2, dim=16)
    >>> index.add(torch.randn(2, 1000, 16))                     # (B, n, d)
    >>> scores, ids = index.search(torch.randn(2, 16), k=8)     # (B, k), padded if < k candidates
    >>> index.stats()["candidates_per_query"] > 0
    True
"""
from __future__ import annotations

import math

import torch

from ._hashing import PRIME, LSHIndex
from .base import Param, non_negative, positive


class ALSHIndex(LSHIndex):
    name = "alsh"
    params = {
        "m": Param(int, 3, "number of norm-power terms appended", False, positive, "must be >= 1"),
        "U": Param(float, 0.83, "largest scaled key norm", False, lambda u: 0 < u < 1, "must be in (0, 1)"),
        "r": Param(float, 2.5, "L2-LSH bucket width", False, positive, "must be > 0"),
        "K": Param(int, 8, "hashes concatenated per table", False, positive, "must be >= 1"),
        "L": Param(int, 16, "hash tables", False, positive, "must be >= 1"),
        "seed": Param(int, 0, "seed of the random projections", False, non_negative, "must be >= 0"),
        "probes": Param(int, 0, "extra buckets probed per table (multi-probe)", True, non_negative,
                        "must be >= 0"),
        "bucket": Param(int, 0, "0: K fixed; b > 0: K grows like log(N/b) (see indexes._hashing)", False,
                        non_negative, "must be >= 0"),
    }
    max_length = 48

    def _tables_count(self) -> int:
        return self.get_param("L")

    def _base_length(self) -> int:
        return self.get_param("K")

    def _unrelated_collision(self) -> float:
        """L2-LSH collision probability at the distance of an orthogonal pair, c = sqrt(1 + m/4)
        (Datar et al. 2004): p(u) = 1 − 2Φ(−u) − 2/(sqrt(2π)u)·(1 − exp(−u²/2)), u = r/c."""
        u = self.get_param("r") / math.sqrt(1 + self.get_param("m") / 4)
        phi = 0.5 * (1 + math.erf(-u / math.sqrt(2)))
        return 1 - 2 * phi - 2 / (math.sqrt(2 * math.pi) * u) * (1 - math.exp(-u * u / 2))

    def _make_hash(self, generator: torch.Generator, length: int) -> dict[str, torch.Tensor]:
        width, tables = self.dim + self.get_param("m"), self.get_param("L")
        return {
            "a": torch.randn(width, tables, length, generator=generator, dtype=torch.float64),
            "b": torch.rand(tables, length, generator=generator, dtype=torch.float64) * self.get_param("r"),
            "mix": torch.randint(1, PRIME, (tables, length), generator=generator),
        }

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        """v (..., d+m) -> (aᵀv + b)/r for the first K(N) hashes of each table, shaped (..., L, K)."""
        a = self._hash["a"][:, :, : self._length]
        out = v @ a.reshape(a.shape[0], -1) + self._hash["b"][:, : self._length].reshape(-1)
        return (out / self.get_param("r")).unflatten(-1, a.shape[1:])

    def _mix(self, h: torch.Tensor) -> torch.Tensor:
        """Integer hashes (..., L, K) -> one code per table (..., L): Σ_i h_i·R_i mod (2^31 − 1)."""
        weights = self._hash["mix"][:, : self._length]
        return (h.remainder(PRIME) * weights).remainder(PRIME).sum(-1).remainder(PRIME)

    def _hash_keys(self, keys: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
        x = keys * (self.get_param("U") / caps).view(-1, 1, 1)
        sq = (x * x).sum(dim=-1, keepdim=True)  # ‖x'‖²
        powers = torch.cat([sq ** (2**i) for i in range(self.get_param("m"))], dim=-1)
        return self._mix(self._project(torch.cat([x, powers], dim=-1)).floor().long())

    def _hash_queries(self, queries: torch.Tensor, probes: int) -> torch.Tensor:
        q = queries / queries.norm(dim=1, keepdim=True).clamp(min=1e-300)
        halves = q.new_full((q.shape[0], self.get_param("m")), 0.5)
        v = self._project(torch.cat([q, halves], dim=1))  # (B, L, K)
        h = v.floor()
        own = self._mix(h.long()).unsqueeze(2)  # (B, L, 1)
        if probes == 0:
            return own
        frac = v - h
        nearest = torch.minimum(frac, 1 - frac).topk(probes, dim=2, largest=False).indices  # (B, L, probes)
        step = torch.where(frac < 0.5, -1, 1).gather(2, nearest)  # cross the nearer boundary
        weight = self._hash["mix"][:, : self._length].expand(q.shape[0], -1, -1).gather(2, nearest)
        # the mixed code is linear in each h_i, so moving h_i by ±1 moves the code by ±R_i
        return torch.cat([own, (own + step * weight).remainder(PRIME)], dim=2)
