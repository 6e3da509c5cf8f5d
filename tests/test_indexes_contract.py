"""One retrieval contract, tested once for every registered backend (``indexes.REGISTRY``).

Every registered backend must appear in ``CASES`` with at least one factory string and its recall
floor (1.0 = exact); a new backend inherits the whole suite by adding its line. Backends that cannot
run here (faiss missing, no CUDA) are skipped with their ``unavailable_reason``.
"""
from __future__ import annotations

import math

import pytest
import torch

from indexes import REGISTRY, make_index, parse_factory_string

# factory string -> recall@8 floor on ``clustered(seed=0)``; exact backends have floor 1.0
CASES: dict[str, dict[str, float]] = {
    "exact": {"exact": 1.0},
    "dedup": {"dedup:tol=0": 1.0, "dedup:tol=0.05": 0.9},
    "faiss": {
        "faiss:Flat": 1.0,
        "faiss:HNSW16,efSearch=64,exact_below=0": 0.9,
        "faiss:HNSW16,efSearch=64,mips=l2,exact_below=0": 0.9,
        "faiss:IVF16,nprobe=4": 0.9,
    },
    "faiss-gpu": {"faiss-gpu:Flat": 1.0, "faiss-gpu:IVF16,nprobe=4": 0.9},
    "alsh": {"alsh:m=3,U=0.83,r=2.5,K=10,L=32,probes=1": 0.8},
    "simple-lsh": {"simple-lsh:bits=10,tables=32,probes=2": 0.85, "simple-lsh:bits=4,tables=32,probes=1,bucket=2": 0.6},
}
EXACT = {spec for cases in CASES.values() for spec, floor in cases.items() if floor == 1.0}
SPECS = [spec for cases in CASES.values() for spec in cases]
K = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops dominate here; with 2+ OpenMP threads on a loaded machine each can wait a time slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_registered_backend_has_a_case() -> None:
    assert set(CASES) == set(REGISTRY), "add a factory string and recall floor for every backend"
    for name, cases in CASES.items():
        assert cases and all(parse_factory_string(spec)[0] == name for spec in cases)


def build(spec: str, batch_size: int, dim: int):
    index = make_index(spec)
    reason = index.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{spec}: {reason}")
    index.reset(batch_size, dim)
    return index


def clustered(seed: int, B: int = 4, N: int = 1000, d: int = 32, clusters: int = 20):
    """Keys near `clusters` shared centres with norms varied by x0.5..1.5; one query per sequence."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    keys = centres[torch.randint(0, clusters, (B, N), generator=g)] + 0.3 * torch.randn(B, N, d, generator=g)
    keys = keys * (0.5 + torch.rand(B, N, 1, generator=g))
    queries = centres[torch.randint(0, clusters, (B,), generator=g)] + 0.3 * torch.randn(B, d, generator=g)
    return keys, queries


def true_topk(keys: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bmm(keys, queries.unsqueeze(2)).squeeze(2).topk(k, dim=1).indices


def recall(ids: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), truth.tolist()))
    return hits / truth.numel()


def check_well_formed(keys: torch.Tensor, queries: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor) -> None:
    """Best first, -inf/-1 padding at the end only, no repeats, scores = exact inner products of the ids."""
    assert scores.dtype == queries.dtype and ids.dtype == torch.long
    found = ids >= 0
    assert torch.equal(found, scores > -math.inf)
    assert torch.all(found[:, :-1] | ~found[:, 1:]), "padding must come last"
    assert torch.all(scores[:, :-1] >= scores[:, 1:]), "results must be best first"
    for b in range(ids.shape[0]):
        row = ids[b][found[b]]
        assert len(set(row.tolist())) == len(row)
        torch.testing.assert_close(scores[b][found[b]], keys[b, row] @ queries[b])


@pytest.mark.parametrize("spec", SPECS)
def test_recall_floor_and_scores(spec: str) -> None:
    keys, queries = clustered(seed=0)
    index = build(spec, *keys.shape[::2])
    index.add(keys)
    scores, ids = index.search(queries, K)
    check_well_formed(keys, queries, scores, ids)
    floor = next(cases[spec] for cases in CASES.values() if spec in cases)
    assert recall(ids, true_topk(keys, queries, K)) >= floor
    # hashing backends must answer from buckets, not from a scan of every slot
    assert index.stats().get("candidates_per_query", 0.0) <= 0.5 * keys.shape[1]


@pytest.mark.parametrize("spec", sorted(EXACT))
def test_exact_backends_equal_brute_force_with_ties_as_sets(spec: str) -> None:
    g = torch.Generator().manual_seed(1)
    keys = torch.randint(-2, 3, (3, 200, 8), generator=g).float()  # integer scores: many exact ties
    queries = torch.randint(-2, 3, (3, 8), generator=g).float()
    index = build(spec, 3, 8)
    index.add(keys)
    scores, ids = index.search(queries, K)
    check_well_formed(keys, queries, scores, ids)
    # equal top-k scores, and ids equal as sets within each group of tied scores
    assert torch.equal(scores, torch.bmm(keys, queries.unsqueeze(2)).squeeze(2).topk(K, dim=1).values)


@pytest.mark.parametrize("spec", SPECS)
def test_sequences_never_leak(spec: str) -> None:
    keys, queries = clustered(seed=2, B=3)
    queries = queries[:1].expand(3, -1).contiguous()
    # every sequence holds the same key set in a different order: an answer taken from another
    # sequence's structure would name slots that hold other vectors here
    perms = [torch.arange(keys.shape[1])] + [torch.randperm(keys.shape[1], generator=torch.Generator().manual_seed(b))
                                             for b in (1, 2)]
    keys = torch.stack([keys[0, p] for p in perms])
    index = build(spec, 3, keys.shape[2])
    index.add(keys)
    scores, ids = index.search(queries, K)
    check_well_formed(keys, queries, scores, ids)
    floor = next(cases[spec] for cases in CASES.values() if spec in cases)
    for b in range(3):
        assert recall(ids[b : b + 1], true_topk(keys[b : b + 1], queries[b : b + 1], K)) >= min(floor, 0.5)


@pytest.mark.parametrize("spec", SPECS)
def test_padding_when_fewer_than_k_slots(spec: str) -> None:
    keys, queries = clustered(seed=3, B=2, N=3)
    index = build(spec, 2, keys.shape[2])
    scores, ids = index.search(queries, K)
    assert torch.equal(ids, torch.full((2, K), -1)) and bool(torch.all(scores == -math.inf))
    index.add(keys)
    scores, ids = index.search(queries, K)
    check_well_formed(keys, queries, scores, ids)
    assert torch.all(ids[:, 3:] == -1) and torch.all(scores[:, 3:] == -math.inf)
    if spec in EXACT:
        assert all(sorted(row[:3]) == [0, 1, 2] for row in ids.tolist())


@pytest.mark.parametrize("spec", SPECS)
def test_incremental_add_equals_adding_at_once(spec: str) -> None:
    keys, queries = clustered(seed=4, B=3, N=700)
    # norms that grow over time make the norm-dependent backends rehash / rebuild on the way
    keys = keys * torch.linspace(0.2, 3.0, keys.shape[1]).view(1, -1, 1)
    at_once = build(spec, 3, keys.shape[2])
    at_once.add(keys)
    one_by_one = build(spec, 3, keys.shape[2])
    for i in range(keys.shape[1]):
        one_by_one.add(keys[:, i : i + 1])
        if i % 97 == 0:  # searches in between trigger the lazy builds at intermediate sizes
            one_by_one.search(queries, K)
    assert one_by_one.ntotal == at_once.ntotal == keys.shape[1]
    expected, got = at_once.search(queries, K), one_by_one.search(queries, K)
    assert torch.equal(expected[1], got[1]) and torch.equal(expected[0], got[0])


@pytest.mark.parametrize("spec", SPECS)
def test_fixed_seeds_give_identical_results(spec: str) -> None:
    keys, queries = clustered(seed=5)
    results = []
    for _ in range(2):
        index = build(spec, keys.shape[0], keys.shape[2])
        index.add(keys)
        results.append(index.search(queries, K))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("spec", SPECS)
def test_float64_in_float64_out(spec: str) -> None:
    keys, queries = clustered(seed=6, B=2, N=700)
    index = build(spec, 2, keys.shape[2])
    index.add(keys.double())
    scores, ids = index.search(queries.double(), K)
    check_well_formed(keys.double(), queries.double(), scores, ids)


@pytest.mark.parametrize("spec", SPECS)
def test_factory_string_round_trips(spec: str) -> None:
    text = str(make_index(spec))
    assert str(make_index(text)) == text
    assert repr(make_index(text)) == f"make_index({text!r})"


@pytest.mark.parametrize("spec", SPECS)
def test_bad_inputs_raise(spec: str) -> None:
    index = make_index(spec)
    with pytest.raises(RuntimeError, match="before reset"):
        index.search(torch.zeros(2, 4), K)
    with pytest.raises(RuntimeError, match="before reset"):
        index.add(torch.zeros(2, 1, 4))
    index = build(spec, 2, 4)
    good = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.add(good.index_fill(1, torch.tensor([2]), math.nan))
    with pytest.raises(ValueError, match="shape"):
        index.add(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="shape"):
        index.add(torch.randn(5, 4))
    with pytest.raises(ValueError, match="shape"):
        index.add(torch.randn(3, 5, 4))
    index.add(good)
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.search(torch.tensor([[0.0, math.inf, 0.0, 0.0], [0.0] * 4]), K)
    with pytest.raises(ValueError, match="shape"):
        index.search(torch.randn(2, 5), K)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(torch.randn(2, 4), 0)
    with pytest.raises(ValueError, match="float64"):
        index.search(torch.randn(2, 4, dtype=torch.float64), K)
    assert index.ntotal == 5  # failed calls changed nothing
    index.trust_inputs().reset(2, 4)  # trust lasts until the next reset
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.add(good.index_fill(1, torch.tensor([2]), math.nan))


@pytest.mark.parametrize("spec", SPECS)
def test_unknown_and_misplaced_parameters_raise(spec: str) -> None:
    with pytest.raises(ValueError, match="valid parameters"):
        make_index(spec + ("," if ":" in spec else ":") + "bogus=1")
    index = make_index(spec)
    build_time = [k for k, p in index.params.items() if not p.search_time]
    search_time = [k for k, p in index.params.items() if p.search_time]
    for key in build_time:
        with pytest.raises(ValueError, match="fixed when the index is built"):
            index.set_params(**{key: index.get_param(key)})
    with pytest.raises(ValueError, match="valid parameters"):
        index.set_params(bogus=1)
    for key in search_time:  # search-time parameters change the factory string, no rebuild needed
        index.set_params(**{key: index.get_param(key) + 1})
        assert f"{key}={index.get_param(key)}" in str(index)


@pytest.mark.parametrize("spec", SPECS)
def test_search_time_parameters_change_without_rebuilding(spec: str) -> None:
    keys, queries = clustered(seed=8, B=2, N=700)
    index = build(spec, 2, keys.shape[2])
    index.add(keys)
    index.search(queries, K)
    natives = list(getattr(index, "_natives", []))
    before = {k: v for k, v in index.stats().items() if k in ("rebuilds", "trainings", "rehashes")}
    for key, param in index.params.items():
        if param.search_time:
            index.set_params(**{key: index.get_param(key) + 1})
    scores, ids = index.search(queries, K)
    check_well_formed(keys, queries, scores, ids)
    assert all(a is b for a, b in zip(natives, getattr(index, "_natives", [])))
    assert before == {k: v for k, v in index.stats().items() if k in before}


def test_unknown_backends_and_descriptors_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid backends: .*exact"):
        make_index("annoy:trees=10")
    with pytest.raises(ValueError, match="nprobe.*valid parameters: efSearch"):
        make_index("faiss:HNSW32,nprobe=4")
    with pytest.raises(ValueError, match="efSearch.*valid parameters: nprobe"):
        make_index("faiss:IVF64,efSearch=4")
    with pytest.raises(ValueError, match="valid descriptors: Flat, HNSW<M>, IVF<nlist>"):
        make_index("faiss:PQ16")
    with pytest.raises(ValueError, match="valid descriptors: Flat, IVF<nlist>"):
        make_index("faiss-gpu:HNSW32")
    with pytest.raises(ValueError, match="exactly one descriptor"):
        make_index("faiss:efSearch=3")
    with pytest.raises(ValueError, match="probes must be in"):
        make_index("simple-lsh:bits=4,probes=5")
    with pytest.raises(ValueError, match="U=1.5 is invalid"):
        make_index("alsh:U=1.5")
    with pytest.raises(ValueError, match="takes only key=value"):
        make_index("exact:Flat")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", SPECS)
def test_cuda_tensors_in_cuda_results_out(spec: str) -> None:
    keys, queries = clustered(seed=7, B=2, N=700)
    index = build(spec, 2, keys.shape[2])
    index.add(keys.cuda())
    scores, ids = index.search(queries.cuda(), K)
    assert scores.is_cuda and ids.is_cuda
    check_well_formed(keys, queries, scores.cpu(), ids.cpu())


def test_ivf_below_faiss_points_per_centroid_trains_quietly(capfd) -> None:
    """``min_train`` below FAISS's 39 points per centroid is the user's choice: no warning per training."""
    reason = REGISTRY["faiss"].unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    index = make_index("faiss:IVF4,nprobe=2,min_train=4")
    index.reset(batch_size=2, dim=8)
    index.add(torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(0)))
    index.search(torch.randn(2, 8), 3)
    assert index.stats()["trainings"] == 2
    assert "WARNING clustering" not in capfd.readouterr().err
