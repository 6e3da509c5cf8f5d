"""``dedup``: exact search over the distinct keys of each sequence; repeated keys share one scan.

Shapes: B sequences, N keys per sequence, R groups (distinct keys) per sequence, d key dimension, k results.

Why: a recurrent model that sees nothing new writes nearly the same slot again and again. The copy model
of experiments/RESULTS.md, trained on at T=10⁵, holds 20,004 keys in a sequence that fall into 91 groups
at tol=10⁻⁶ (30 at 10⁻⁴). Exact search scans all of them. Approximate indexes do badly on such a memory:
only a few keys score above the repeated ones, so the top 5 of a query include keys far from it (cosine
about −0.6), which IVF's nearest lists and an HNSW graph's neighbourhoods do not hold (measured on those
keys, searched in the order they were written: recall@5 0.44 for IVF64 with nprobe 8 or 16, and 0.1–0.3
for HNSW32 up to efSearch=512 on the whole memory). Here each key either joins the group of an earlier
key it is close to, or starts a group of its own; a search scores the R group representatives exactly and
hands out members of the best groups. A search for k <= ``MEMBERS`` slots costs O(R·d + k·MEMBERS) instead
of O(N·d); a larger k, O(R·d + N). When nothing repeats (R = N) it costs a constant factor more than exact
search; so does each add, which compares the key with the representatives (O(R·d)).

Grouping rule (``tol``): key k joins the group of representative r (the first key of the group) when
|k − r| <= tol·|r|, r being the nearest of the NEAREST_BY_COSINE representatives with the largest cosine
to k; otherwise k starts a group. So every member's score is within tol·|r|·|q| of its representative's,
and a search returns the top-k of slots ranked by their group's score (the newest MEMBERS members of a
group stand for it; ties inside a group are broken arbitrarily), re-scored exactly. With ``tol=0`` only
identical keys share a group and the results are those of exact search (ties as sets). Keys are grouped
in the order they arrive, so adding them one at a time or all at once gives the same groups and the same
results.

Example::

    >>> import torch
    >>> from indexes import make_index
    >>> index = make_index("dedup:tol=1e-6")
    >>> index.reset(batch_size=1, dim=2)
    >>> index.add(torch.tensor([[[1., 0.], [0., 1.], [1., 0.], [1., 0.]]]))   # slots 0, 2, 3 are equal
    >>> index.stats()["groups"]
    2.0
    >>> scores, ids = index.search(torch.tensor([[1., 0.]]), k=2)    # two of the three equal slots
    >>> scores.tolist(), set(ids[0].tolist()) <= {0, 2, 3}
    ([[1.0, 1.0]], True)
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import MIPSIndex, Param, pad_results, restored_buffer, saved_prefix
from .exact import KeyStore, rerank


NEAREST_BY_COSINE = 16  # representatives whose distance to a new key is computed (the best by cosine)
MEMBERS = 8  # slot ids kept per group (its newest): searches for k <= MEMBERS never touch the N slots


class DedupIndex(MIPSIndex):
    name = "dedup"
    params = {
        "tol": Param(float, 1e-6, "a key joins a group when |key - representative| <= tol * |representative|",
                     False, lambda v: v >= 0.0, "must be >= 0"),
    }

    def _reset(self) -> None:
        self._store = KeyStore()  # every key, for the exact re-scoring of returned slots
        # (B, d, capacity) group representatives, by column: scoring them is one contiguous (1, d) x (d, R)
        # product per sequence, several times faster on CPU than (R, d) x (d, 1) (see ``exact.KeyStore``)
        self._reps: torch.Tensor | None = None
        self._rep_norms: torch.Tensor | None = None  # (B, capacity)
        self._bias: torch.Tensor | None = None  # (B, capacity) 0 for a sequence's groups, -inf beyond them
        self._groups: torch.Tensor | None = None  # (B,) groups per sequence
        self._most = self._fewest = 0  # the most and the fewest groups of any sequence
        self._group_of: torch.Tensor | None = None  # (B, capacity) group id of each slot
        self._members: torch.Tensor | None = None  # (B, capacity, MEMBERS) newest slot ids of each group, -1: none
        self._joined: torch.Tensor | None = None  # (B, capacity) slots that joined each group so far

    def _add(self, keys: torch.Tensor) -> None:
        B, n, d = keys.shape
        if self._reps is None:
            device = keys.device
            # zeros, not empty: a representative beyond a sequence's groups is scored too (its bias of -inf
            # hides it), and uninitialised memory may hold an Inf or NaN that would survive the bias
            self._reps, self._rep_norms = keys.new_zeros(B, d, 16), keys.new_zeros(B, 16)
            self._bias = keys.new_full((B, 16), float("-inf"))
            self._groups = torch.zeros(B, dtype=torch.long, device=device)
            self._group_of = torch.empty(B, 16, dtype=torch.long, device=device)
            self._members = torch.full((B, 16, MEMBERS), -1, dtype=torch.long, device=device)
            self._joined = torch.zeros(B, 16, dtype=torch.long, device=device)
        self._store.append(keys)
        for j in range(n):  # in arrival order: a key may join a group that the previous one started
            self._place(keys[:, j], self._count + j)

    def _place(self, key: torch.Tensor, slot: int) -> None:
        """Put each sequence's key (B, d), slot ``slot``, into a group, starting one where none is close."""
        rows = torch.arange(key.shape[0], device=key.device)
        R = self._most
        if R:
            cosine = torch.baddbmm(self._bias[:, None, :R], key.unsqueeze(1), self._reps[:, :, :R]).squeeze(1)
            cosine = cosine / self._rep_norms[:, :R].clamp(min=1e-30)
            # float32 cosines of nearly equal vectors all round to ~1: the nearest representative is found by
            # distance among the NEAREST_BY_COSINE best by cosine
            shortlist = cosine.topk(min(NEAREST_BY_COSINE, R), dim=1).indices  # (B, s)
            gaps = (self._reps[rows.unsqueeze(1), :, shortlist] - key.unsqueeze(1)).norm(dim=2)  # (B, s)
            if self._fewest < shortlist.shape[1]:  # a sequence with fewer groups: its shortlist has padding
                gaps = gaps.masked_fill(shortlist >= self._groups.unsqueeze(1), float("inf"))
            gap, pick = gaps.min(dim=1)
            nearest = shortlist[rows, pick]
            close = gap <= self.get_param("tol") * self._rep_norms[rows, nearest]
            group = torch.where(close, nearest, self._groups)
        else:
            close, group = torch.zeros_like(self._groups, dtype=torch.bool), self._groups
        self._reps = _grown(self._reps, R + 1, fill=0.0, dim=2)
        self._rep_norms = _grown(self._rep_norms, R + 1, fill=0.0)
        self._bias = _grown(self._bias, R + 1, fill=float("-inf"))
        self._members = _grown(self._members, R + 1, fill=-1)
        self._joined = _grown(self._joined, R + 1, fill=0)
        self._group_of = _grown(self._group_of, slot + 1)
        # Every sequence writes a representative at its next free row; where the key joined a group that
        # row stays beyond the sequence's last group (unused, its bias still -inf, overwritten when a group
        # starts there).
        self._reps[rows, :, self._groups] = key
        self._rep_norms[rows, self._groups] = key.norm(dim=1)
        self._bias[rows, self._groups] = torch.where(close, float("-inf"), 0.0).to(self._bias.dtype)
        self._groups = self._groups + (~close).long()
        self._most, self._fewest = int(self._groups.max()), int(self._groups.min())
        self._group_of[:, slot] = group
        self._members[rows, group, self._joined[rows, group] % MEMBERS] = slot
        self._joined[rows, group] += 1

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, R, N = queries.shape[0], self._most, self._count
        group_scores = torch.baddbmm(self._bias[:, None, :R], queries.unsqueeze(1), self._reps[:, :, :R]).squeeze(1)
        if k > MEMBERS:
            slot_scores = group_scores.gather(1, self._group_of[:, :N])  # (B, N): each slot scored by its group
            ids = slot_scores.topk(min(k, N), dim=1).indices
            return pad_results(*rerank(self._store.view(), queries, ids), k)
        # The k best slots lie in the k best groups: their kept members, best group first.
        best = group_scores.topk(min(k, R), dim=1)
        capacity = self._members.shape[1]
        rows = torch.arange(B, device=queries.device).unsqueeze(1) * capacity
        members = self._members.view(B * capacity, MEMBERS).index_select(0, (best.indices + rows).flatten())
        # (B, k' * MEMBERS); a sequence with fewer than k' groups also gets places beyond its groups (scored
        # -inf), which hold no member (-1) and so hand out nothing
        members = members.view(B, -1)
        # the first k valid ids of each row (-1 marks an unused member place)
        position = torch.arange(members.shape[1], device=queries.device, dtype=queries.dtype)
        first = torch.where(members >= 0, position, float("inf")).topk(min(k, N), dim=1, largest=False).indices
        ids = members.gather(1, first)  # all valid once N >= k (the k best groups hold at least k members)
        return pad_results(*rerank(self._store.view(), queries, ids, all_valid=N >= k), k)

    # The per-group buffers, each with the value its unused entries hold (``_grown``'s fill) and the dim
    # along which groups lie. Only the first R = ``_most`` groups are saved: entries from R on are never read
    # before ``_place`` writes them (a representative written where the key joined a group lies at or
    # beyond the sequence's group count, and is rewritten when a group starts there), so restoring them as
    # fill continues exactly.
    _GROUP_BUFFERS: ClassVar[dict[str, tuple[float, int]]] = {
        "reps": (0.0, 2), "rep_norms": (0.0, 1), "bias": (float("-inf"), 1), "members": (-1, 1), "joined": (0, 1),
    }

    def _state_dict(self) -> dict[str, Any]:
        assert self._reps is not None and self._group_of is not None
        state = {name: saved_prefix(getattr(self, "_" + name), self._most, dim)
                 for name, (_, dim) in self._GROUP_BUFFERS.items()}
        return {
            **state,
            "group_capacity": self._reps.shape[2],
            "groups": self._groups.clone(),
            "group_of": saved_prefix(self._group_of, self._count),
            "slot_capacity": self._group_of.shape[1],
            "store": self._store.state_dict(),
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._device
        for name, (fill, dim) in self._GROUP_BUFFERS.items():
            setattr(self, "_" + name, restored_buffer(state[name], state["group_capacity"], dim, fill, device))
        self._groups = state["groups"].to(device)
        self._most, self._fewest = int(self._groups.max()), int(self._groups.min())
        self._group_of = restored_buffer(state["group_of"], state["slot_capacity"], device=device)
        self._store.load_state_dict(state["store"], device)

    def stats(self) -> dict[str, float]:
        if self._groups is None:
            return {}
        return {"groups": float(self._groups.float().mean())}

    def nbytes(self) -> int:
        extra = 0
        if self._reps is not None:
            parts = (self._reps, self._rep_norms, self._bias, self._group_of, self._members, self._joined)
            extra = sum(t.numel() * t.element_size() for t in parts)
        return self._store.nbytes() + extra


def _grown(buffer: torch.Tensor, needed: int, fill: float | None = None, dim: int = 1) -> torch.Tensor:
    """``buffer`` with at least ``needed`` entries along ``dim`` (doubling; new entries = ``fill``)."""
    capacity = buffer.shape[dim]
    if needed <= capacity:
        return buffer
    shape = list(buffer.shape)
    shape[dim] = max(needed, 2 * capacity)
    grown = buffer.new_empty(shape)
    if fill is not None:
        grown.fill_(fill)
    grown.narrow(dim, 0, capacity).copy_(buffer)
    return grown
