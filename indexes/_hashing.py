"""Hash tables and the search loop shared by the LSH backends (``alsh``, ``simple-lsh``), in torch.

Shapes: B sequences, n keys per ``add``, N keys per sequence, d key dimension, k results, L tables,
P probes per table, C candidates (all queries together).

A backend maps each key to L bucket codes in [0, 2^31) and each query to P codes per table. Bucket
``(b, code)`` of table t holds the slots of sequence b whose code in table t is ``code``; the candidates
of query b are the union of its buckets over the L tables, re-ranked by the exact inner product, top-k.

Tables (``BucketTables``): per table, one sorted run of bucket keys ``b·2^31 + code`` (int64) with the
slot ids alongside, so a bucket is a contiguous range found by two ``searchsorted`` calls: O(L·P·log(BN))
per query plus the bucket sizes, not a scan over the codes. Newly added keys go to a small unsorted
tail (at most max(64, sqrt(N)) keys per sequence) whose codes are compared directly; when the tail is
full it is merged into the runs by insertion (one pass, no re-sort). Everything is batched over B and
runs on the keys' device (CPU or CUDA).

Code length: with ``bucket=0`` each table concatenates the fixed K hashes of the factory string, so a
fixed fraction (~p2^K) of unrelated keys shares the query's bucket and candidates grow linearly in N.
LSH's sublinear query time needs K to grow like log N (K = log(N)/log(1/p2)); ``bucket=b`` > 0 does
that: K = max(K, ceil(log(N/b)/log(1/p2))), rehashing everything when K changes (N grows by a factor
1/p2 between changes, so the rehash work is amortised O(1) per key). Recall then falls slowly with N
at a fixed number of tables: the usual trade-off, reported by the benchmark.

Norm policy: ALSH and Simple-LSH divide keys by a maximum norm M. Each sequence uses
``M_b = norm_cap(max ‖x‖)`` (``indexes.base.norm_cap``: a geometric grid of ratio 2^(1/4)); when a new key
moves some sequence's max norm past its grid point, every key is rehashed (``stats()['rehashes']``).
So codes depend only on the keys held, and adding slots one at a time gives exactly the results of
adding them at once. Hash projections are computed in float64 so that a key's bucket does not depend on
how keys were batched (BLAS rounding).

Too few candidates: a query whose buckets hold fewer than k slots gets what was found, padded with
-inf / -1. There is no silent fallback to a linear scan; raise ``probes`` (multi-probe: also visit the
buckets of the least certain hash coordinates) or use more tables.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch

from .base import MIPSIndex, norm_cap, pad_results, saved_prefix
from .exact import KeyStore

PRIME = 2**31 - 1  # codes live in [0, 2^31), so b·2^31 + code is unique per (sequence, code)
SHIFT = 31
CHUNK = 4096  # keys hashed at once, bounding the float64 projection buffer to B·CHUNK·(L·K) values


class BucketTables:
    """L hash tables over B sequences: sorted runs of (sequence, code) keys plus an unsorted tail."""

    def __init__(self, batch_size: int, tables: int, device: torch.device) -> None:
        self.B, self.L, self.device = batch_size, tables, device
        self.count = 0  # slots per sequence
        self._keys = torch.empty(tables, 0, dtype=torch.long, device=device)  # (L, S), sorted per row
        self._slots = torch.empty(tables, 0, dtype=torch.int32, device=device)  # (L, S)
        self._tail = torch.empty(batch_size, 0, tables, dtype=torch.long, device=device)  # (B, T, L)
        self._tail_start = 0  # slot id of the first tail key

    def rebuild(self, codes: torch.Tensor) -> None:
        """Replace everything by codes (B, N, L) of slots 0..N-1."""
        self._keys, self._slots = self._sorted(codes, 0)
        self._tail, self._tail_start, self.count = codes[:, :0], codes.shape[1], codes.shape[1]

    def append(self, codes: torch.Tensor) -> None:
        """Add codes (B, n, L) of the next n slots."""
        self._tail = torch.cat([self._tail, codes], dim=1)
        self.count += codes.shape[1]
        if self._tail.shape[1] > max(64, math.isqrt(self._tail_start)):
            self._merge()

    def _sorted(self, codes: torch.Tensor, first_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, n, L = codes.shape
        seq = torch.arange(B, device=self.device).view(B, 1, 1) << SHIFT
        keys = (codes + seq).permute(2, 0, 1).reshape(L, B * n).contiguous()
        slots = torch.arange(first_slot, first_slot + n, dtype=torch.int32, device=self.device)
        slots = slots.expand(L, B, n).reshape(L, B * n)
        keys, order = keys.sort(dim=1, stable=True)
        return keys.contiguous(), slots.gather(1, order).contiguous()

    def _merge(self) -> None:
        tail_keys, tail_slots = self._sorted(self._tail, self._tail_start)
        if self._keys.shape[1] == 0:
            self._keys, self._slots = tail_keys, tail_slots
        else:
            L, T = tail_keys.shape
            # where each tail key lands in the merged row: its insertion point plus the tail keys before it
            pos = torch.searchsorted(self._keys, tail_keys, right=True) + torch.arange(T, device=self.device)
            is_tail = torch.zeros(L, self._keys.shape[1] + T, dtype=torch.bool, device=self.device)
            is_tail.scatter_(1, pos, True)
            keys = torch.empty(is_tail.shape, dtype=torch.long, device=self.device)
            slots = torch.empty(is_tail.shape, dtype=torch.int32, device=self.device)
            keys[is_tail], keys[~is_tail] = tail_keys.reshape(-1), self._keys.reshape(-1)
            slots[is_tail], slots[~is_tail] = tail_slots.reshape(-1), self._slots.reshape(-1)
            self._keys, self._slots = keys, slots
        self._tail, self._tail_start = self._tail[:, :0], self.count

    def candidates(self, query_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query_codes (B, L, P) -> (sequence, slot) of the union of those buckets, sorted, no repeats."""
        B, L, P = query_codes.shape
        seq_parts, slot_parts = [], []
        if self._keys.shape[1]:
            S = self._keys.shape[1]
            seq = torch.arange(B, device=self.device).view(B, 1, 1) << SHIFT
            wanted = (query_codes + seq).permute(1, 0, 2).reshape(L, B * P).contiguous()
            lo = torch.searchsorted(self._keys, wanted)
            hi = torch.searchsorted(self._keys, wanted, right=True)
            counts = (hi - lo).reshape(-1)
            starts = (lo + torch.arange(L, device=self.device).view(L, 1) * S).reshape(-1)
            total = int(counts.sum())
            # positions of every bucket member: the run start repeated per member, plus 0, 1, 2, ...
            firsts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
            pos = torch.repeat_interleave(starts, counts, output_size=total)
            pos = pos + torch.arange(total, device=self.device) - firsts
            seq_parts.append(self._keys.reshape(-1)[pos] >> SHIFT)
            slot_parts.append(self._slots.reshape(-1)[pos].long())
        if self._tail.shape[1]:
            hit = (self._tail.unsqueeze(3) == query_codes.unsqueeze(1)).flatten(2).any(2)  # (B, T)
            b, t = hit.nonzero(as_tuple=True)
            seq_parts.append(b)
            slot_parts.append(t + self._tail_start)
        flat = torch.cat(seq_parts) * self.count + torch.cat(slot_parts)
        flat = torch.unique(flat, sorted=True)
        return flat // self.count, flat % self.count

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._keys, self._slots, self._tail))

    def state_dict(self) -> dict[str, Any]:
        # the sorted runs and the tail as they stand: when the tail is merged depends on its length, so
        # merging it here (or rebuilding from codes) would change later merges and the order of candidates
        return {"keys": self._keys.clone(), "slots": self._slots.clone(),
                "tail": saved_prefix(self._tail, self._tail.shape[1]),  # may be a view of a larger code tensor
                "tail_start": self._tail_start, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._keys, self._slots, self._tail = (state[name].to(self.device) for name in ("keys", "slots", "tail"))
        self._tail_start, self.count = state["tail_start"], state["count"]


def topk_per_sequence(
    seq: torch.Tensor, slot: torch.Tensor, scores: torch.Tensor, batch_size: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of C candidates grouped by sequence (``seq`` sorted): (scores, ids) (B, k) and counts (B,)."""
    counts = torch.bincount(seq, minlength=batch_size)
    width = max(1, int(counts.max())) if seq.numel() else 1
    pos = torch.arange(seq.numel(), device=seq.device) - (torch.cumsum(counts, 0) - counts)[seq]
    table = scores.new_full((batch_size, width), -math.inf)
    table[seq, pos] = scores
    ids = torch.full((batch_size, width), -1, dtype=torch.long, device=seq.device)
    ids[seq, pos] = slot
    top, where = table.topk(min(k, width), dim=1)
    top_ids = ids.gather(1, where)
    top, top_ids = pad_results(top, top_ids, k)
    return top, top_ids, counts


class LSHIndex(MIPSIndex):
    """Hash keys into L tables, gather the query's buckets, re-rank exactly. Subclasses define the hash."""

    max_length: int = 31  # longest code (hashes per table) a backend supports

    @abstractmethod
    def _tables_count(self) -> int: ...

    @abstractmethod
    def _base_length(self) -> int:
        """Hashes per table as set by the factory string (K, bits)."""

    @abstractmethod
    def _unrelated_collision(self) -> float:
        """Probability p2 that one hash collides for an unrelated (orthogonal) key-query pair."""

    @abstractmethod
    def _make_hash(self, generator: torch.Generator, length: int) -> dict[str, torch.Tensor]:
        """The random hash parameters (CPU) for ``length`` hashes per table, from the seeded generator."""

    @abstractmethod
    def _hash_keys(self, keys: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
        """keys (B, n, d) float64, caps M_b (B,) float64 -> codes (B, n, L) int64 in [0, 2^31),
        using the first ``self._length`` hashes of each table."""

    @abstractmethod
    def _hash_queries(self, queries: torch.Tensor, probes: int) -> torch.Tensor:
        """queries (B, d) float64 -> codes (B, L, 1 + probes) int64, the query's own bucket first."""

    def length_for(self, n: int) -> int:
        """Hashes per table at n keys per sequence: the factory value, or with ``bucket`` > 0 the
        LSH choice K = ceil(log(n / bucket) / log(1/p2)) (at least the factory value), which keeps
        unrelated keys at about ``bucket`` per bucket, so candidates per table stay ~constant in n."""
        base, bucket = self._base_length(), self.get_param("bucket")
        if bucket == 0 or n <= bucket:
            return base
        grown = math.ceil(math.log(n / bucket) / -math.log(self._unrelated_collision()))
        return min(self.max_length, max(base, grown))

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._check_probes()

    def _check_probes(self) -> None:
        probes, limit = self.get_param("probes"), self._base_length()
        if not 0 <= probes <= limit:
            raise ValueError(f"index '{self.name}': probes={probes} is invalid; probes must be in [0, {limit}]")

    def set_params(self, **values: Any) -> None:
        before = dict(self._values)
        try:
            super().set_params(**values)
            self._check_probes()
        except ValueError:
            self._values = before
            raise

    def _reset(self) -> None:
        self._store = KeyStore()
        self._tables: BucketTables | None = None
        self._hash: dict[str, torch.Tensor] = {}
        self._max_norm: torch.Tensor | None = None  # (B,) float64, largest key norm per sequence
        self._caps: torch.Tensor | None = None  # (B,) float64, M_b = norm_cap(max norm)
        self._length = self._base_length()  # hashes per table in use
        self._searches = self._queries = self._rehashes = 0
        self._candidates_total = 0.0
        self._candidates_last = math.nan

    def _add(self, keys: torch.Tensor) -> None:
        if self._tables is None:
            generator = torch.Generator().manual_seed(self.get_param("seed"))
            drawn = self.max_length if self.get_param("bucket") else self._base_length()
            self._hash = {k: v.to(keys.device) for k, v in self._make_hash(generator, drawn).items()}
            self._tables = BucketTables(self.batch_size, self._tables_count(), keys.device)
            self._max_norm = torch.zeros(self.batch_size, dtype=torch.float64, device=keys.device)
        self._store.append(keys)
        norms = keys.to(torch.float64).norm(dim=2).amax(dim=1)
        self._max_norm = torch.maximum(self._max_norm, norms)
        caps = torch.tensor([norm_cap(v) for v in self._max_norm.tolist()], dtype=torch.float64, device=keys.device)
        length = self.length_for(self._store.count)
        if self._caps is not None and (length != self._length or bool((caps != self._caps).any())):
            self._caps, self._length = caps, length
            self._rehashes += 1
            self._tables.rebuild(self._codes(self._store.view()))
        else:
            self._caps, self._length = caps, length
            self._tables.append(self._codes(keys))

    def _codes(self, keys: torch.Tensor) -> torch.Tensor:
        parts = [self._hash_keys(keys[:, s : s + CHUNK].to(torch.float64), self._caps)
                 for s in range(0, keys.shape[1], CHUNK)]
        return torch.cat(parts, dim=1)

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self._hash_queries(queries.to(torch.float64), self.get_param("probes"))
        seq, slot = self._tables.candidates(codes)
        keys = self._store.view()
        scores = (keys[seq, slot] * queries[seq]).sum(dim=1)  # exact re-rank, (C,)
        top, ids, counts = topk_per_sequence(seq, slot, scores, self.batch_size, k)
        self._candidates_last = float(counts.to(torch.float64).mean())
        self._candidates_total += float(counts.sum())
        self._searches += 1
        self._queries += self.batch_size
        return top, ids

    def _state_dict(self) -> dict[str, Any]:
        assert self._tables is not None and self._max_norm is not None and self._caps is not None
        return {
            "store": self._store.state_dict(),
            "tables": self._tables.state_dict(),
            # drawn once from ``seed`` at the first add (all the hashes ``bucket`` may ever use): saved rather
            # than drawn again, so a state does not depend on torch's generator staying the same across versions
            "hash": {name: t.clone() for name, t in self._hash.items()},
            "max_norm": self._max_norm.clone(),
            "caps": self._caps.clone(),
            "length": self._length,
            "counters": [self._searches, self._queries, self._rehashes],
            "candidates": [self._candidates_total, self._candidates_last],
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._device
        self._store.load_state_dict(state["store"], device)
        self._tables = BucketTables(self.batch_size, self._tables_count(), device)
        self._tables.load_state_dict(state["tables"])
        self._hash = {name: t.to(device) for name, t in state["hash"].items()}
        self._max_norm, self._caps = state["max_norm"].to(device), state["caps"].to(device)
        self._length = state["length"]
        self._searches, self._queries, self._rehashes = state["counters"]
        self._candidates_total, self._candidates_last = state["candidates"]

    def stats(self) -> dict[str, float]:
        """candidates_per_query: mean over the last search's queries; candidates_per_query_mean: over all."""
        if self._batch_size is None:
            return {}
        return {
            "hashes_per_table": float(self._length),
            "candidates_per_query": self._candidates_last,
            "candidates_per_query_mean": self._candidates_total / self._queries if self._queries else math.nan,
            "searches": float(self._searches),
            "rehashes": float(self._rehashes),
        }

    def nbytes(self) -> int:
        tables = 0 if self._tables is None else self._tables.nbytes()
        hashes = sum(t.numel() * t.element_size() for t in self._hash.values())
        return self._store.nbytes() + tables + hashes
