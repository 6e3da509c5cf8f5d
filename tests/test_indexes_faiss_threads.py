"""The FAISS backends run FAISS on ``threads`` OpenMP threads inside their searches and flushes (default 1;
0 leaves FAISS's own count; ``indexes._faiss``, ``faiss_threads``) and give the caller its own count back."""
import pytest
import torch

from indexes import make_index

faiss = pytest.importorskip("faiss")


def _threads_seen(factory: str) -> list[tuple[str, int]]:
    """(call, FAISS's thread count during it) for a flush and a search, with the caller's count at 3."""
    index = make_index(factory)
    index.reset(batch_size=2, dim=4)
    index.add(torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0)))
    seen = []
    fill, native_queries = index._fill, index._native_queries

    def recording_fill(*args):
        seen.append(("fill", faiss.omp_get_max_threads()))
        return fill(*args)

    def recording_queries(queries):
        seen.append(("search", faiss.omp_get_max_threads()))
        return native_queries(queries)

    index._fill, index._native_queries = recording_fill, recording_queries
    index.flush()
    assert faiss.omp_get_max_threads() == 3
    index.add(torch.randn(2, 1, 4))
    index.search(torch.randn(2, 4), 3)
    assert faiss.omp_get_max_threads() == 3
    assert {kind for kind, _ in seen} == {"fill", "search"}
    return seen


@pytest.fixture
def caller_uses_three_threads():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("factory", ["faiss:IVF2,nprobe=1,min_train=2", "faiss:HNSW8,exact_below=0", "faiss:Flat"])
@pytest.mark.parametrize("threads, expected", [(None, 1), (2, 2), (0, 3)])
def test_native_calls_run_on_the_asked_threads_and_the_callers_count_is_restored(
        factory: str, threads: int | None, expected: int, caller_uses_three_threads) -> None:
    seen = _threads_seen(factory if threads is None else f"{factory},threads={threads}")
    assert all(count == expected for _, count in seen), seen
