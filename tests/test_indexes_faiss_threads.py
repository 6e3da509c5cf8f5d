"""The FAISS backends run FAISS on one OpenMP thread inside their searches and flushes (``indexes._faiss``,
``single_threaded``) and give the caller its own thread count back."""
import pytest
import torch

from indexes import make_index

faiss = pytest.importorskip("faiss")


@pytest.mark.parametrize("factory", ["faiss:IVF2,nprobe=1,min_train=2", "faiss:HNSW8,exact_below=0", "faiss:Flat"])
def test_native_calls_run_on_one_thread_and_the_callers_count_is_restored(factory: str) -> None:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
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
        assert all(threads == 1 for _, threads in seen), seen
    finally:
        faiss.omp_set_num_threads(before)
