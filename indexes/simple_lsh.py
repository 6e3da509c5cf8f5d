"""``simple-lsh``: Simple-LSH for MIPS (Neyshabur & Srebro, ICML 2015) with sign random projections, in torch.

Shapes: B sequences, n keys per ``add``, N keys per sequence, d key dimension, k results,
``tables`` hash tables of ``bits`` sign bits each.

Transforms (M_b = the capped max key norm of sequence b, see ``indexes._hashing``)::

    P(x) = [ x/M_b ; sqrt(1 − ‖x‖²/M_b²) ]      (unit norm)
    Q(q) = [ q/‖q‖ ; 0 ]                         (unit norm)

so that P(x)ᵀQ(q) = qᵀx / (M_b ‖q‖): the angle between P(x) and Q(q) is monotone in the inner product,
and sign random projections (Charikar 2002), ``h_a(v) = [aᵀv > 0]`` with a ~ N(0, I_{d+1}), collide
with probability 1 − angle/π. A table's bucket is its ``bits`` signs packed into an integer; a query's
candidates are the union of its buckets over the tables, re-ranked by the true inner product.
``probes`` (search time) also visits, per table, the buckets that differ in one of the ``probes``
least certain bits (smallest |aᵀQ(q)|). ``seed`` fixes the projections: equal seeds give identical results.
``bucket`` > 0 lengthens the codes with N (bits = max(bits, ceil(log2(N/bucket)))) so that candidates grow
sublinearly; see ``indexes._hashing``.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("simple-lsh:bits=16,tables=8")
    >>> index.reset(batch_size=2, dim=16)
    >>> index.add(torch.randn(2, 1000, 16))                     # (B, n, d)
    >>> scores, ids = index.search(torch.randn(2, 16), k=8)     # (B, k), padded if < k candidates
    >>> index.set_params(probes=2)                              # search time, no rehash
"""
from __future__ import annotations

import torch

from ._hashing import LSHIndex
from .base import Param, non_negative, positive


class SimpleLSHIndex(LSHIndex):
    name = "simple-lsh"
    params = {
        "bits": Param(int, 16, "sign bits per table", False, lambda v: 1 <= v <= 31, "must be in [1, 31]"),
        "tables": Param(int, 8, "hash tables", False, positive, "must be >= 1"),
        "seed": Param(int, 0, "seed of the random projections", False, non_negative, "must be >= 0"),
        "probes": Param(int, 0, "extra buckets probed per table (one flipped bit each)", True, non_negative,
                        "must be >= 0"),
        "bucket": Param(int, 0, "0: bits fixed; b > 0: bits grow like log2(N/b) (see indexes._hashing)", False,
                        non_negative, "must be >= 0"),
    }
    max_length = 31

    def _tables_count(self) -> int:
        return self.get_param("tables")

    def _base_length(self) -> int:
        return self.get_param("bits")

    def _unrelated_collision(self) -> float:
        return 0.5  # a sign bit of two orthogonal vectors

    def _make_hash(self, generator: torch.Generator, length: int) -> dict[str, torch.Tensor]:
        return {"a": torch.randn(self.dim + 1, self.get_param("tables"), length, generator=generator,
                                 dtype=torch.float64)}

    def _project(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """v (..., d+1 or d) -> aᵀv for the first bits(N) projections of each table, (..., L, bits)."""
        a = a[:, :, : self._length]
        return (v @ a.reshape(a.shape[0], -1)).unflatten(-1, a.shape[1:])

    def _pack(self, signs: torch.Tensor) -> torch.Tensor:
        powers = 1 << torch.arange(signs.shape[-1], device=signs.device)
        return (signs.long() * powers).sum(-1)

    def _hash_keys(self, keys: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
        x = keys / caps.view(-1, 1, 1)
        extra = (1 - (x * x).sum(dim=-1, keepdim=True)).clamp(min=0).sqrt()
        return self._pack(self._project(torch.cat([x, extra], dim=-1), self._hash["a"]) > 0)

    def _hash_queries(self, queries: torch.Tensor, probes: int) -> torch.Tensor:
        q = queries / queries.norm(dim=1, keepdim=True).clamp(min=1e-300)
        v = self._project(q, self._hash["a"][:-1])  # the appended 0 contributes nothing
        own = self._pack(v > 0).unsqueeze(2)  # (B, L, 1)
        if probes == 0:
            return own
        unsure = v.abs().topk(probes, dim=2, largest=False).indices  # (B, L, probes)
        return torch.cat([own, own ^ (1 << unsure)], dim=2)
