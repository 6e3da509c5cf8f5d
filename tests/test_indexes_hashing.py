"""The LSH backends' hash tables against a plain dict, and their backend-specific behaviour."""
from __future__ import annotations

import math

import pytest
import torch

from indexes import make_index
from indexes._hashing import BucketTables


def naive_candidates(codes: torch.Tensor, query_codes: torch.Tensor) -> set[tuple[int, int]]:
    """Dict of buckets per table: (table, sequence, code) -> slots; union of the queried buckets."""
    buckets: dict[tuple[int, int, int], list[int]] = {}
    B, N, L = codes.shape
    for b in range(B):
        for slot in range(N):
            for t in range(L):
                buckets.setdefault((t, b, int(codes[b, slot, t])), []).append(slot)
    found = set()
    for b in range(B):
        for t in range(L):
            for code in query_codes[b, t].tolist():
                found.update((b, s) for s in buckets.get((t, b, code), []))
    return found


@pytest.mark.parametrize("batches", [[300], [1] * 150 + [150], [70, 1, 1, 200, 28]])
def test_bucket_tables_match_a_dict(batches: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    B, L, N = 3, 4, sum(batches)
    codes = torch.randint(0, 7, (B, N, L), generator=g)  # few codes: big, shared buckets
    tables = BucketTables(B, L, torch.device("cpu"))
    start = 0
    for n in batches:  # exercises the tail, the merges and the tail+runs search
        tables.append(codes[:, start : start + n])
        start += n
        query_codes = torch.randint(0, 7, (B, L, 2), generator=g)
        seq, slot = tables.candidates(query_codes)
        got = list(zip(seq.tolist(), slot.tolist()))
        assert got == sorted(set(got)), "candidates are sorted and unique"
        assert set(got) == naive_candidates(codes[:, :start], query_codes)


def test_rebuild_equals_appending() -> None:
    codes = torch.randint(0, 1000, (2, 500, 3), generator=torch.Generator().manual_seed(1))
    a, b = BucketTables(2, 3, torch.device("cpu")), BucketTables(2, 3, torch.device("cpu"))
    a.rebuild(codes)
    for i in range(0, 500, 7):
        b.append(codes[:, i : i + 7])
    query_codes = codes[:, :5].permute(0, 2, 1)  # (B, L, 5): buckets that exist
    for x, y in zip(a.candidates(query_codes), b.candidates(query_codes)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("spec", ["alsh:K=4,L=4", "simple-lsh:bits=6,tables=4"])
def test_stats_report_candidates_and_seeds_change_hashes(spec: str) -> None:
    keys = torch.randn(2, 400, 16, generator=torch.Generator().manual_seed(2))
    queries = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    runs = []
    for seed in (0, 0, 1):
        index = make_index(f"{spec},seed={seed}")
        index.reset(2, 16)
        assert math.isnan(index.stats()["candidates_per_query"])
        index.add(keys)
        index.search(queries, 5)
        index.search(queries, 5)
        stats = index.stats()
        assert stats["searches"] == 2 and stats["candidates_per_query"] == stats["candidates_per_query_mean"]
        runs.append(stats["candidates_per_query"])
    assert runs[0] == runs[1] != runs[2]


def test_more_probes_never_lose_candidates() -> None:
    keys = torch.randn(2, 1000, 16, generator=torch.Generator().manual_seed(4))
    queries = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    index = make_index("simple-lsh:bits=12,tables=4")
    index.reset(2, 16)
    index.add(keys)
    counts = []
    for probes in (0, 1, 4):
        index.set_params(probes=probes)
        index.search(queries, 5)
        counts.append(index.stats()["candidates_per_query"])
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("spec", ["alsh:K=4,L=2,bucket=8", "simple-lsh:bits=4,tables=2,bucket=8"])
def test_bucket_mode_lengthens_codes_with_n(spec: str) -> None:
    index = make_index(spec)
    index.reset(1, 8)
    lengths = []
    for _ in range(3):
        index.add(torch.randn(1, 1000, 8, generator=torch.Generator().manual_seed(len(lengths))))
        index.search(torch.randn(1, 8), 3)
        lengths.append(index.stats()["hashes_per_table"])
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0] >= 4
    assert index.length_for(10**9) <= index.max_length
