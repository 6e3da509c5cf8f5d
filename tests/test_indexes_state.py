"""Checkpoints of every registered backend: ``state_dict`` / ``load_state_dict`` resume bit-exactly.

Runs over the contract's factory strings (``test_indexes_contract.SPECS``, so a new backend inherits it)
plus strings that cross the backends' phase changes within a few hundred keys: IVF's exact phase, first
training and retrainings; HNSW's exact phase and its L2 graph rebuilt when the norm cap moves; LSH codes
lengthened with N (rehash). A restored index must then answer every search exactly as the original, and
stay equal through further adds that cross more phase changes.
"""
from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from test_indexes_contract import CASES, SPECS, K, build, clustered, one_thread  # noqa: F401 (autouse fixture)

from indexes import REGISTRY, make_index

# the contract's strings, plus strings whose phase changes come early (T = min_train * nlist keys, exact_below)
PHASED = [
    "faiss:IVF4,nprobe=2,min_train=10",  # exact below 40 keys, trained at 40, retrained at 80, 160, 320, 640
    "faiss:HNSW8,efSearch=16,mips=l2,exact_below=100",
    "alsh:K=4,L=8,probes=1,bucket=4",
]
STATE_SPECS = SPECS + PHASED
# 712 keys in uneven adds: IVF16 trained (624), IVF4 retrained 4 times; the small last adds stay in the LSH
# tables' unsorted tail
ADDS_BEFORE = [1, 30, 5, 90, 1, 300, 280, 3, 2]
ADDS_AFTER = [1, 3, 250, 1, 400, 700]  # to 2067 keys: IVF16 (1248) and IVF4 (1280) retrained


def test_phased_strings_cover_registered_backends() -> None:
    assert set(CASES) == set(REGISTRY)
    assert all(make_index(spec).name in REGISTRY for spec in PHASED)


def growing_keys(seed: int, B: int = 2, N: int = sum(ADDS_BEFORE) + sum(ADDS_AFTER), d: int = 16):
    """Clustered keys and queries. The keys' norms grow over the first ~540 slots and after slot ~1380 (norm
    caps move: rebuilds, rehashes) and stay level in between, where the save happens: keys then wait in the LSH
    tables' unsorted tail, and HNSW's L2 graphs grow without being rebuilt."""
    keys, queries = clustered(seed, B=B, N=N, d=d)
    scale = torch.linspace(0.3, 3.0, N).clamp(max=1.0) + torch.linspace(-2.0, 1.0, N).clamp(min=0.0)
    return keys * scale.view(1, -1, 1), queries


def round_trip(state: dict[str, Any], weights_only: bool = True) -> dict[str, Any]:
    """``state`` through ``torch.save`` and ``torch.load``; with ``weights_only=True`` (torch's default since
    2.6) the restricted unpickler must take it, so a checkpoint holding an index state loads without trusting
    arbitrary pickles."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


def restored(spec: str, state: dict[str, Any]):
    index = make_index(spec)
    index.load_state_dict(round_trip(state))
    return index


def assert_same_results(a, b, queries: torch.Tensor) -> None:
    for k in (1, K, 40):  # 40 > dedup's MEMBERS: its O(N) path too
        (sa, ia), (sb, ib) = a.search(queries, k), b.search(queries, k)
        assert torch.equal(ia, ib) and torch.equal(sa, sb), f"k={k}"
    x, y = a.stats(), b.stats()  # counters too (trainings, rebuilds, rehashes, candidates; NaN before a search)
    assert x.keys() == y.keys() and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)


def assert_same_state(x: Any, y: Any) -> None:
    assert type(x) is type(y)
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y)
    elif isinstance(x, dict):
        assert x.keys() == y.keys()
        for key in x:
            assert_same_state(x[key], y[key])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for a, b in zip(x, y):
            assert_same_state(a, b)
    else:
        assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))


@pytest.mark.parametrize("pending", [False, True], ids=["flushed", "pending"])
@pytest.mark.parametrize("spec", STATE_SPECS)
def test_restored_index_continues_exactly(spec: str, pending: bool) -> None:
    keys, queries = growing_keys(seed=0)
    original = build(spec, keys.shape[0], keys.shape[2])
    start = 0
    for i, n in enumerate(ADDS_BEFORE):
        original.add(keys[:, start : start + n])
        start += n
        # searches in between run the lazy builds at intermediate sizes; pending: the last two adds are saved
        # before any search moved them into the native structures
        if not pending or i < len(ADDS_BEFORE) - 2:
            original.search(queries, K)
    state = original.state_dict()
    copy = restored(spec, state)
    assert str(copy) == str(original) and copy.ntotal == original.ntotal
    assert_same_results(original, copy, queries)
    g = torch.Generator().manual_seed(1)
    for n in ADDS_AFTER:
        original.add(keys[:, start : start + n])
        copy.add(keys[:, start : start + n])
        start += n
        queries = queries + 0.5 * torch.randn(queries.shape, generator=g)
        assert_same_results(original, copy, queries)
    assert start == keys.shape[1]


def test_phase_changes_happen_on_both_sides_of_the_save() -> None:
    """The schedule above does cross the phases it is meant to cross, before and after the save (the contract's
    HNSW16 and LSH strings have no exact phase; their graphs and tables grow, dedup's groups too)."""
    reason = REGISTRY["faiss"].unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    keys, queries = growing_keys(seed=0)
    for spec, counter in [("faiss:IVF4,nprobe=2,min_train=10", "trainings"), ("faiss:IVF16,nprobe=4", "trainings"),
                          ("faiss:HNSW8,efSearch=16,mips=l2,exact_below=100", "rebuilds"),
                          ("alsh:K=4,L=8,probes=1,bucket=4", "rehashes")]:
        index = build(spec, 2, keys.shape[2])
        counts, start = [], 0
        for sizes in (ADDS_BEFORE, ADDS_AFTER):
            for n in sizes:
                index.add(keys[:, start : start + n])
                index.search(queries, K)
                start += n
            counts.append(index.stats()[counter])
        assert 0 < counts[0] < counts[1], (spec, counts)


@pytest.mark.parametrize("spec", STATE_SPECS)
def test_state_is_a_snapshot(spec: str) -> None:
    """Later adds and searches do not reach into a state already taken (no views of growing buffers)."""
    keys, queries = growing_keys(seed=1, N=500)
    index = build(spec, 2, keys.shape[2])
    index.add(keys[:, :300])
    index.search(queries, K)
    state = index.state_dict()
    again, unrestricted = round_trip(state), round_trip(state, weights_only=False)
    index.add(keys[:, 300:])
    index.search(queries, K)
    assert_same_state(state, again)
    assert_same_state(state, unrestricted)


@pytest.mark.parametrize("spec", STATE_SPECS)
def test_empty_and_unreset_indexes_round_trip(spec: str) -> None:
    keys, queries = growing_keys(seed=2, N=50)
    unreset = make_index(spec)
    if unreset.unavailable_reason() is not None:
        pytest.skip(unreset.unavailable_reason())
    copy = restored(spec, unreset.state_dict())
    with pytest.raises(RuntimeError, match="before reset"):
        copy.search(queries, K)
    empty = build(spec, 2, keys.shape[2])
    copy = restored(spec, empty.state_dict())
    assert copy.ntotal == 0 and copy.batch_size == 2 and copy.dim == keys.shape[2]
    assert_same_results(empty, copy, queries)
    empty.add(keys)
    copy.add(keys)
    assert_same_results(empty, copy, queries)


def test_loading_into_other_backends_or_parameters_raises() -> None:
    keys, _ = growing_keys(seed=3, N=20)
    index = make_index("exact")
    index.reset(2, keys.shape[2])
    index.add(keys)
    state = round_trip(index.state_dict())
    with pytest.raises(ValueError, match=r"saved by 'exact', this index is 'dedup:tol=0.0'.*make_index\('exact'\)"):
        make_index("dedup:tol=0").load_state_dict(state)
    for spec, other in [("simple-lsh:bits=8,tables=4", "simple-lsh:bits=8,tables=4,seed=1"),
                        ("simple-lsh:bits=8,tables=4", "simple-lsh:bits=8,tables=4,probes=1"),  # search time too
                        ("dedup:tol=0", "dedup:tol=0.001")]:
        saved = make_index(spec).state_dict()
        with pytest.raises(ValueError, match="saved by"):
            make_index(other).load_state_dict(saved)
    with pytest.raises(ValueError, match="format 1"):
        make_index("exact").load_state_dict({**state, "format": 2})
    with pytest.raises(ValueError, match="state_dict"):
        make_index("exact").load_state_dict([state])
    index.load_state_dict(state)  # a failed load is refused before anything changes; a good one still works
    assert index.ntotal == 20


@pytest.mark.parametrize("other", ["faiss:IVF8,nprobe=4", "faiss:IVF16,nprobe=8", "faiss:HNSW16", "faiss:Flat"])
def test_faiss_descriptors_and_parameters_must_match(other: str) -> None:
    if REGISTRY["faiss"].unavailable_reason() is not None:
        pytest.skip(REGISTRY["faiss"].unavailable_reason())
    with pytest.raises(ValueError, match="saved by 'faiss:IVF16,nprobe=4"):
        make_index(other).load_state_dict(make_index("faiss:IVF16,nprobe=4").state_dict())


def test_flags_dtype_and_device_come_back() -> None:
    keys, queries = growing_keys(seed=4, N=30)
    index = make_index("exact").trust_inputs()
    index.reset(2, keys.shape[2])
    index.trust_inputs()
    index.add(keys.double())
    copy = restored("exact", index.state_dict())
    assert copy.check_finite is False
    with pytest.raises(ValueError, match="float64"):
        copy.search(queries, K)  # float32 queries for float64 keys: refused as by the original
    scores, ids = copy.search(queries.double(), K)
    assert scores.dtype == torch.float64 and torch.equal(ids, index.search(queries.double(), K)[1])
    searched_only = make_index("exact")  # no key yet, but a search fixed dtype and device
    searched_only.reset(2, keys.shape[2])
    searched_only.search(queries.double(), K)
    with pytest.raises(ValueError, match="float64"):
        restored("exact", searched_only.state_dict()).add(keys)


def test_state_costs_the_keys_held_not_the_buffers() -> None:
    """torch.save stores compact tensors: the spare capacity of growable buffers is not written."""
    B, N, d = 2, 1100, 16  # the key buffer holds 1600 slots, 45% unused
    keys = torch.randn(B, N, d, generator=torch.Generator().manual_seed(5))
    index = make_index("exact")
    index.reset(B, d)
    for i in range(0, N, 100):
        index.add(keys[:, i : i + 100])
    assert index.nbytes() >= 1.4 * B * N * d * 4
    buffer = io.BytesIO()
    torch.save(index.state_dict(), buffer)
    assert buffer.tell() < B * N * d * 4 + 4096


def test_dedup_sequences_with_uneven_group_counts() -> None:
    """dedup saves only the groups in use: a sequence with few groups beside one with many must come back
    with its unused group places scored -inf (its queries' true scores all negative, where a 0 would win)."""
    g = torch.Generator().manual_seed(6)
    few = 0.1 * torch.randn(3, 8, generator=g)
    few[:, 0] = 1.0 + torch.rand(3, generator=g)  # scored < 0 by the query -e_0
    seq0 = few[torch.randint(0, 3, (400,), generator=g)]  # 3 groups
    seq1 = torch.randn(400, 8, generator=g)  # 400 groups
    keys = torch.stack([seq0, seq1])
    queries = torch.stack([-torch.eye(8)[0], torch.randn(8, generator=g)])
    original = make_index("dedup:tol=0")
    original.reset(2, 8)
    original.add(keys[:, :150])
    copy = restored("dedup:tol=0", original.state_dict())
    assert_same_results(original, copy, queries)
    for start in range(150, 400, 50):  # the many-group sequence grows the group buffers past their capacity
        original.add(keys[:, start : start + 50])
        copy.add(keys[:, start : start + 50])
        assert_same_results(original, copy, queries)
    assert original.search(queries, 3)[0][0].max() < 0
