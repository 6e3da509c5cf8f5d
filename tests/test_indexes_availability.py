"""Backends say why they cannot run (instead of failing at import); ``python -m indexes`` lists them."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import indexes._faiss
from indexes import available_backends, make_index
from indexes.__main__ import describe


def test_without_faiss_the_faiss_backends_explain_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'faiss'")

    monkeypatch.setattr(indexes._faiss, "load_faiss", missing)
    reasons = available_backends()
    assert reasons["faiss"] == reasons["faiss-gpu"] == "faiss is not installed (pip install faiss-cpu)"
    assert reasons["exact"] is None and reasons["alsh"] is None and reasons["simple-lsh"] is None
    index = make_index("faiss:HNSW32,efSearch=64")  # parsing needs no faiss
    with pytest.raises(RuntimeError, match="faiss is not installed"):
        index.reset(2, 8)


def test_the_package_imports_without_faiss() -> None:
    code = "import sys; sys.modules['faiss'] = None; import indexes; print(indexes.available_backends()['faiss'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "faiss is not installed" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_faiss_gpu_needs_a_gpu() -> None:
    """Without a GPU the reason names what is missing: GPU support in the faiss build, else a visible GPU;
    and an index asked for anyway refuses with it."""
    faiss = pytest.importorskip("faiss")  # without faiss the reason says so (the first test)
    gpu_build = hasattr(faiss, "StandardGpuResources")
    no_gpu_build = "faiss build has no GPU support (install a faiss GPU build)"
    reason = "needs CUDA (no GPU visible)" if gpu_build else no_gpu_build
    assert available_backends()["faiss-gpu"] == reason
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        make_index("faiss-gpu:Flat").reset(2, 8)


def test_listing_names_every_backend_and_parameter() -> None:
    text = describe()
    for name in available_backends():
        assert f"\n{name} " in text
    for key in ("efSearch", "nprobe", "probes", "bits", "tables", "exact_below", "min_train", "U=0.83"):
        assert key in text
