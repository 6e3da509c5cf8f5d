"""SAB-MIPS against brute-force SAB (docs/algorithm.md, "SAB-MIPS: candidates from an index"): exact indexes
give the same outputs and gradients, and an approximate index forced onto the exact top set does too (it may
change only which slots are candidates).

faiss:Flat searches in float32 but re-scores its candidates exactly in the query dtype (``indexes._faiss``),
so it is tested in float64 as well: on these random inputs its float32 search finds the same top set.
"""
import pytest
import torch

from sab_mips import PassOptions, SABConfig, build_model

from helpers import assert_same, outputs_and_grads
from reference_models import sab_forward_reference

# N reaches 40 slots per sequence (k_att=1), well above every k_cand below.
BASE = dict(input_size=3, output_size=4, hidden_size=6, attn_dim=5, k_top=2, k_att=1, k_trunc=4)
APPROXIMATE = ["faiss:HNSW32,efSearch=16,exact_below=0", "simple-lsh:bits=12,tables=1"]


def make(dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(SABConfig(**{**BASE, **kwargs}), dtype=dtype)


def inputs(dtype=torch.float64, B=3, T=40):
    return torch.randn(B, T, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("preset", ["paper", "recommended"])
@pytest.mark.parametrize("retrieval", ["exact", "faiss:Flat", "dedup:tol=0"])
@pytest.mark.parametrize("k_cand", [None, 3, 7])
def test_exact_retrieval_equals_reference_float64(retrieval, k_cand, preset):
    model = make(retrieval=retrieval, k_cand=k_cand, preset=preset)
    x = inputs()
    fast = outputs_and_grads(model, x, model)
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp))
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-10)
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], ref[1][name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("retrieval", ["exact", "faiss:Flat"])
@pytest.mark.parametrize("k_cand", [None, 7])
def test_exact_retrieval_float32_matches_float64_reference(retrieval, k_cand):
    """float32 SAB-MIPS against the float64 brute-force SAB, the same parameters in both precisions.

    The yardstick is float64 because the float32 reference is no closer to it: the sparsifier's
    1/Σ(a − δ) amplifies rounding along the sequence, and at T=40 both the fast path and the float32
    reference drift 1e-4..1e-3 of a gradient's scale from float64 (measured). On this short sequence
    (N = 11 > k_cand) the float32 pass stays within 1e-5 of each gradient's scale and makes the same
    retrieval decisions as float64.
    """
    model = make(dtype=torch.float32, retrieval=retrieval, k_cand=k_cand)
    x = inputs(torch.float32, B=4, T=12)
    fast = outputs_and_grads(model, x, model)
    _, record32 = model(x, return_attention=True)
    model.double()
    ref = outputs_and_grads(model, x.double(), lambda inp: sab_forward_reference(model, inp))
    _, record64 = model(x.double(), return_attention=True)
    assert torch.equal(record32.candidate_ids, record64.candidate_ids)
    assert_same((fast[0].double(), {n: g.double() for n, g in fast[1].items()}), ref, 1e-5, relative=True)


@pytest.mark.parametrize("preset", ["paper", "recommended"])
@pytest.mark.parametrize("retrieval", APPROXIMATE)
def test_approximate_index_given_the_exact_candidates_equals_reference(retrieval, preset):
    """Replaying the exact candidates through an approximate model is exact SAB (and so is
    ``run(retrieval="exact")``, the gradient audit's twin)."""
    model = make(retrieval=retrieval, k_cand=4, preset=preset)
    x = inputs()
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp))
    exact_record = model.run(x, PassOptions(retrieval="exact", record=True)).record
    replayed = outputs_and_grads(model, x, lambda inp: model.run(inp, PassOptions(replay=exact_record.candidate_ids)).logits)
    assert_same(replayed, ref, 1e-10, relative=True)
    assert_same(outputs_and_grads(model, x, lambda inp: model.run(inp, PassOptions(retrieval="exact")).logits), ref, 1e-10,
                relative=True)


@pytest.mark.parametrize("preset", ["paper", "recommended"])
@pytest.mark.parametrize("retrieval", APPROXIMATE)
def test_replayed_candidates_equal_the_reference_with_the_same_candidates(retrieval, preset):
    """The twin of SAB-MIPS with an approximate index, padding included: the reference scores only the
    recorded candidates. One 12-bit table leaves most buckets nearly empty, so candidates are padded with
    -1 and the fast path takes its masked branch."""
    model = make(retrieval=retrieval, k_cand=4, preset=preset)
    x = inputs()
    fast = outputs_and_grads(model, x, model)
    _, record = model(x, return_attention=True)
    if retrieval.startswith("simple-lsh"):
        assert (record.candidate_ids < 0).any() and (record.candidate_ids >= 0).any()
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp, replay=record.candidate_ids))
    assert_same(fast, ref, 1e-10, relative=True)
    replayed = outputs_and_grads(model, x, lambda inp: model.run(inp, PassOptions(replay=record.candidate_ids)).logits)
    assert_same(replayed, fast, 0.0)


def test_replay_refuses_a_record_of_another_shape():
    model = make(retrieval="exact", k_cand=4)
    _, record = model(inputs(), return_attention=True)
    with pytest.raises(ValueError, match="replay holds"):
        model.run(inputs(T=60), options=PassOptions(replay=record.candidate_ids))


def test_approximate_index_alone_changes_the_candidates():
    """The seam above is not vacuous: a coarse LSH index alone does miss exact top slots here."""
    model = make(retrieval="simple-lsh:bits=12,tables=1")
    x = inputs()
    approx = outputs_and_grads(model, x, model)
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp))
    assert not torch.allclose(approx[0], ref[0], atol=1e-6)
    _, found = model(x, return_attention=True)
    model.set_retrieval("exact")
    _, exact = model(x, return_attention=True)
    # Up to the first step whose candidates differ both passes ran the same steps, so there they searched
    # with the same query: the slots exact search selects that the index did not return are its misses.
    first = next(s for s in range(len(exact.steps)) if not torch.equal(found.candidate_ids[s], exact.candidate_ids[s]))
    missed = [set(exact.slot_ids[first, b].tolist()) - set(found.candidate_ids[first, b].tolist()) - {-1}
              for b in range(x.shape[0])]
    assert any(missed), f"step {first}: the index returned every selected slot"


def test_candidates_are_recorded_with_width_k_cand():
    model = make(retrieval="exact", k_cand=5)
    _, record = model(inputs(), return_attention=True)
    assert record.candidate_ids.shape[2] == 5
    assert (record.slot_ids[-1] >= 0).all() and record.slot_ids.shape[2] == 2


@pytest.mark.parametrize("preset", ["paper", "recommended"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("retrieval", ["faiss:Flat", "faiss:HNSW32,efSearch=64,exact_below=0",
                                       "faiss:HNSW32,efSearch=64,mips=l2,exact_below=0"])
def test_same_candidates_give_bit_identical_results(retrieval, dtype, preset):
    """Candidates are put in one order for every backend, so an index that finds the exact candidate set
    (these do on 40 random slots) reproduces exact retrieval bit for bit: runs with different backends can
    differ only where a candidate was missed, never through summation order."""
    model = make(dtype=dtype, retrieval="exact", k_cand=4, preset=preset)
    x = inputs(dtype)
    exact = outputs_and_grads(model, x, model)
    _, exact_record = model(x, return_attention=True)
    model.set_retrieval(retrieval)
    approx = outputs_and_grads(model, x, model)
    _, approx_record = model(x, return_attention=True)
    assert torch.equal(exact_record.candidate_ids, approx_record.candidate_ids)
    assert torch.equal(exact[0], approx[0])
    assert all(torch.equal(exact[1][name], approx[1][name]) for name in exact[1])


def test_candidates_are_in_canonical_order():
    model = make(retrieval="exact", k_cand=4)
    _, record = model(inputs(), return_attention=True)
    ids = record.candidate_ids
    assert torch.equal(ids, ids.sort(dim=2, descending=True).values)  # newest slot first, padding (-1) last
