"""``dedup``: what the shared contract (test_indexes_contract.py) does not reach — keys that repeat, groups
larger than the members kept per group, and searches for more than those members (the O(N) path)."""
import pytest
import torch

from indexes import make_index
from indexes.dedup import MEMBERS


def brute_force_scores(keys: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bmm(keys, queries.unsqueeze(2)).squeeze(2).topk(k, dim=1).values


def search(spec: str, keys: torch.Tensor, queries: torch.Tensor, k: int, one_at_a_time: bool = False):
    index = make_index(spec)
    index.reset(keys.shape[0], keys.shape[2])
    if one_at_a_time:
        for i in range(keys.shape[1]):
            index.add(keys[:, i : i + 1])
    else:
        index.add(keys)
    return index, *index.search(queries, k)


@pytest.mark.parametrize("k", [3, MEMBERS, MEMBERS + 1, 40])
def test_tol_zero_equals_brute_force_on_repeated_keys(k: int) -> None:
    # 9 possible keys, 300 slots: every group holds far more slots than the MEMBERS kept per group
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(-1, 2, (3, 300, 2), generator=g).double()
    queries = torch.randn(3, 2, generator=g, dtype=torch.float64)
    index, scores, ids = search("dedup:tol=0", keys, queries, k)
    assert index.stats()["groups"] <= 9
    assert torch.equal(scores, brute_force_scores(keys, queries, k))
    for b in range(3):
        assert len(set(ids[b].tolist())) == k
        assert torch.equal(scores[b], keys[b, ids[b]] @ queries[b])


@pytest.mark.parametrize("k", [5, MEMBERS + 4])
def test_near_duplicates_share_a_group_and_are_found(k: int) -> None:
    """A model's blank-period slots: a dozen keys written again and again with float noise."""
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
    keys = centres[torch.randint(0, 12, (2, 500), generator=g)] + 1e-9 * torch.randn(2, 500, 16, generator=g)
    keys = keys.double()
    queries = torch.randn(2, 16, generator=g, dtype=torch.float64)
    index, scores, ids = search("dedup:tol=1e-6", keys, queries, k)
    assert index.stats()["groups"] == 12
    # every member lies within tol of its representative, so each score is within tol·|q| of the truth
    torch.testing.assert_close(scores, brute_force_scores(keys, queries, k), rtol=0, atol=1e-6 * queries.norm())
    assert all(len(set(row)) == k for row in ids.tolist())


def test_far_keys_never_merge() -> None:
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(2, 200, 8, generator=g)
    index, _, _ = search("dedup:tol=1e-3", keys, torch.randn(2, 8, generator=g), 4)
    assert index.stats()["groups"] == 200


@pytest.mark.parametrize("k", [MEMBERS, 30])
def test_grouping_follows_arrival_order_not_batching(k: int) -> None:
    g = torch.Generator().manual_seed(3)
    keys = torch.randint(-1, 2, (2, 120, 3), generator=g).float()
    keys = keys + 1e-8 * torch.randn(keys.shape, generator=g)
    queries = torch.randn(2, 3, generator=g)
    at_once = search("dedup:tol=1e-6", keys, queries, k)
    one_by_one = search("dedup:tol=1e-6", keys, queries, k, one_at_a_time=True)
    assert at_once[0].stats() == one_by_one[0].stats()
    assert torch.equal(at_once[1], one_by_one[1]) and torch.equal(at_once[2], one_by_one[2])


@pytest.mark.parametrize("k", [MEMBERS, 20])
def test_sequences_with_very_different_group_counts(k: int) -> None:
    """One sequence repeats two keys, the other never repeats: the places beyond the first sequence's two
    groups (scored -inf, and holding stale keys) must never become a group of their own."""
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(2, 50, 6, generator=g, dtype=torch.float64)
    keys[0, :20], keys[0, 20:] = keys[0, 0], -keys[0, 0]  # A twenty times, then B = -A thirty times,
    keys[0] += 1e-10 * torch.randn(50, 6, generator=g, dtype=torch.float64)  # each with its rounding noise
    queries = torch.randn(2, 6, generator=g, dtype=torch.float64)
    queries[0] = keys[0, 0]
    index, scores, ids = search("dedup:tol=1e-6", keys, queries, k, one_at_a_time=True)
    assert index.stats()["groups"] == (2 + 50) / 2
    torch.testing.assert_close(scores, brute_force_scores(keys, queries, k), rtol=0, atol=1e-8)
    assert all(len(set(row)) == k and min(row) >= 0 for row in ids.tolist())
