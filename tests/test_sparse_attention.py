"""The fused attention step against the plain autograd path (its twin): values, gradients, gradcheck."""
import itertools

import pytest
import torch

from sab_mips import PassOptions, SABConfig, build_model
from sab_mips.ops.sparse_attention import AttentionSpec, attend_backward, attend_forward
from sab_mips.ops.sparsify import softmax_topk_weights, sparse_attention_weights

from helpers import assert_same, outputs_and_grads
from reference_models import sab_forward_reference

COMBOS = list(itertools.product(["dot", "cosine"], ["relu", "softmax"]))


class SparseAttention(torch.autograd.Function):
    """``attend_forward`` / ``attend_backward`` on plain tensors: (summary, weights, scores), for ``gradcheck``
    and the comparison with ``plain``. The model runs the same two functions on its slot buffer
    (``SlotMemory.attend``). Weights and scores are returned detached."""

    @staticmethod
    def forward(ctx, slots, query, key_weight, valid, spec: AttentionSpec):
        summary, weights, scores, saved = attend_forward(slots, query, key_weight, valid, spec)
        ctx.saved, ctx.spec = saved, spec
        ctx.mark_non_differentiable(weights, scores)
        return summary, weights, scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_summary, _grad_weights, _grad_scores):
        g_slots, g_query, g_key_weight, _ = attend_backward(grad_summary, ctx.saved, ctx.spec)
        return g_slots, g_query, g_key_weight, None, None


def plain(slots, query, key_weight, valid, spec):
    """The same step with autograd, op by op."""
    if spec.scorer == "dot":
        scores = (slots * query.unsqueeze(1)).sum(dim=2)
    else:
        keys = slots @ key_weight.t()
        scores = ((keys / keys.norm(dim=2, keepdim=True)) * query.unsqueeze(1)).sum(dim=2)
    if spec.sparsifier == "softmax":
        weights = softmax_topk_weights(scores, spec.k, valid=valid)
    elif valid is None:
        weights = sparse_attention_weights(scores, spec.k, spec.eps, all_valid=True)
    else:
        weights = sparse_attention_weights(scores, spec.k, spec.eps, valid=valid)
    return (weights.unsqueeze(2) * slots).sum(dim=1), weights, scores


def inputs(scorer, B=4, C=6, H=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    slots = torch.randn(B, C, H, generator=g, dtype=torch.float64)
    query = torch.randn(B, H if scorer == "dot" else d, generator=g, dtype=torch.float64)
    key_weight = None if scorer == "dot" else torch.randn(d, H, generator=g, dtype=torch.float64)
    return slots, query, key_weight


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 6])
@pytest.mark.parametrize("scorer, sparsifier", COMBOS)
def test_fused_step_equals_the_plain_step(scorer, sparsifier, k, padded):
    spec = AttentionSpec(scorer, sparsifier, k, 1e-7)
    slots, query, key_weight = inputs(scorer)
    valid = None
    if padded:  # one sequence with 3 real candidates, one with none
        valid = torch.ones(4, 6, dtype=torch.bool)
        valid[1, 3:] = False
        valid[2, :] = False
    upstream = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    results = []
    for step in (SparseAttention.apply, plain):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (slots, query, key_weight)]
        summary, weights, scores = step(*leaves, valid, spec)
        (summary * upstream).sum().backward()
        results.append((summary.detach(), weights.detach(), scores.detach(),
                        [t.grad if t is not None else None for t in leaves]))
    (fast, fast_w, fast_a, fast_g), (ref, ref_w, ref_a, ref_g) = results
    for a, b in ((fast, ref), (fast_w, ref_w), *zip(fast_g, ref_g)):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_a[valid if padded else slice(None)], ref_a[valid if padded else slice(None)])


@pytest.mark.parametrize("scorer, sparsifier", COMBOS)
def test_fused_step_gradcheck(scorer, sparsifier):
    spec = AttentionSpec(scorer, sparsifier, 2, 1e-7)
    slots, query, key_weight = inputs(scorer, B=2, C=4, H=3, d=2, seed=3)
    leaves = [t.requires_grad_() for t in (slots, query, key_weight) if t is not None]

    def summary(*args):
        if scorer == "dot":
            return SparseAttention.apply(args[0], args[1], None, None, spec)[0]
        return SparseAttention.apply(*args, None, spec)[0]

    assert torch.autograd.gradcheck(summary, tuple(leaves))


@pytest.mark.parametrize("kernel", ["python", "compiled"])
@pytest.mark.parametrize("preset", ["paper", "recommended"])
@pytest.mark.parametrize("retrieval", ["exact", "simple-lsh:bits=12,tables=1"])
def test_model_with_fused_steps_equals_plain_steps_and_the_reference(preset, retrieval, kernel):
    """The fused steps, on the Python path or in the compiled recurrence, against the plain autograd path and
    the reference."""
    torch.manual_seed(0)
    model = build_model(SABConfig(preset=preset, input_size=3, output_size=4, hidden_size=6, attn_dim=5, k_top=2,
                                  k_att=1, k_trunc=4, retrieval=retrieval, k_cand=4), dtype=torch.float64)
    model.layer.set_kernel(kernel)
    x = torch.randn(3, 40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert model.layer.use_fused and "attention='fused'" in repr(model)
    fused = outputs_and_grads(model, x, model, input_grad=True)
    record = model.run(x, PassOptions(record=True)).record
    model.layer.use_fused = False
    model.layer.set_kernel("python")  # the plain path is Python's
    assert "attention='plain (use_fused=False)'" in repr(model)
    assert_same(fused, outputs_and_grads(model, x, model, input_grad=True), 1e-10, relative=True)
    reference = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp, replay=record.candidate_ids),
                                  input_grad=True)
    assert_same(fused, reference, 1e-10, relative=True)


def test_scorers_without_a_fused_step_say_so():
    model = build_model(SABConfig(scorer="additive", input_size=3, output_size=2, hidden_size=4))
    assert not model.layer.use_fused and "no fused step" in repr(model)


@pytest.mark.parametrize("scorer", ["dot", "cosine"])
@pytest.mark.parametrize("retrieval", ["exact", "faiss:HNSW32,efSearch=16,exact_below=0"])
def test_exploring_model_equals_the_reference_with_its_recorded_candidates(scorer, retrieval):
    """Training mode with explore=R: the fused and the plain paths, and the reference replaying the recorded
    candidates (searched and random), give the same outputs and gradients."""
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", scorer=scorer, sparsifier="softmax", explore=3, input_size=3,
                                  output_size=4, hidden_size=6, attn_dim=5, k_top=2, k_att=1, k_trunc=4,
                                  retrieval=retrieval), dtype=torch.float64)
    x = torch.randn(3, 40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    record = model.run(x, PassOptions(record=True)).record
    assert record.candidate_ids.shape[2] == 3 + 3 and (record.candidate_ids[-1, :, 3:] >= 0).any()
    replay = record.candidate_ids
    fused = outputs_and_grads(model, x, lambda inp: model.run(inp, PassOptions(replay=replay)).logits, input_grad=True)
    torch.manual_seed(5)  # the same draws: the recorded pass itself
    assert_same(fused, outputs_and_grads(model, x, model, input_grad=True), 1e-12, relative=True)
    model.layer.use_fused = False
    assert_same(fused, outputs_and_grads(model, x, lambda inp: model.run(inp, PassOptions(replay=replay)).logits, input_grad=True),
                1e-10, relative=True)
    reference = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp, replay=replay),
                                  input_grad=True)
    assert_same(fused, reference, 1e-10, relative=True)
    # evaluation mode never explores: only the searched candidates
    model.eval()
    assert model.run(x, PassOptions(record=True)).record.candidate_ids.shape[2] == 3


def test_exploration_candidates_never_repeat_a_slot():
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", sparsifier="softmax", explore=6, input_size=3, output_size=2,
                                  hidden_size=4, k_top=2, k_att=1, k_trunc=4))
    ids = model.run(torch.randn(8, 12, 3), PassOptions(record=True)).record.candidate_ids  # few slots: many repeats drawn
    for row in ids.reshape(-1, ids.shape[2]).tolist():
        real = [i for i in row if i >= 0]
        assert len(real) == len(set(real))


def test_explore_needs_the_softmax_sparsifier():
    with pytest.raises(ValueError, match="explore=2 needs the softmax sparsifier"):
        SABConfig(preset="paper", explore=2)


def _recommended(kernel: str = "python", **kwargs):
    """A small recommended-preset model on ``kernel`` (the key cache below is the Python path's)."""
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="recommended", input_size=3, output_size=4, hidden_size=6, attn_dim=5,
                                  k_top=2, k_att=1, k_trunc=4, **kwargs), dtype=torch.float64)
    model.layer.set_kernel(kernel)
    return model


def _streamed_grads(model, x):
    """Outputs and gradients of two windows of one stream, the state detached between them."""
    model.zero_grad()
    _, state = model.layer(x[:, :17])
    second, state = model.layer(x[:, 17:], state.detach())
    weights = torch.linspace(-1, 1, second.numel(), dtype=second.dtype).reshape(second.shape)
    (second * weights).sum().backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return second.detach(), grads


def test_cosine_steps_keep_each_slots_key_and_give_its_gradient_at_the_write():
    """The key cache is used (gradient deposited on the unit keys) and W_k's gradient arrives complete: the
    model test above compares it with the plain path; here, that the cache is what ran."""
    model = _recommended()
    assert model.layer.caches_keys
    features, state = model.layer(torch.randn(3, 30, 3, dtype=torch.float64))
    buffers = state.memory._buffers
    assert buffers.keys_made_with(model.layer.scorer.key_proj.weight)
    features.sum().backward()
    assert buffers.key_grad is not None and buffers.key_grad.abs().sum() == 0  # all taken by the writes
    model.layer.use_fused = False
    assert not model.layer.caches_keys


@pytest.mark.parametrize("kernel", ["python", "compiled"])
def test_a_detached_stream_with_cosine_steps_equals_the_plain_path(kernel):
    """After state.detach() the older slots' writes are outside the graph: W_k must still get the gradient of
    their keys (the memory projects the candidates again there)."""
    model = _recommended(kernel)
    x = torch.randn(3, 40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fused = _streamed_grads(model, x)
    assert fused[1]["layer.scorer.key_proj.weight"].abs().sum() > 0
    model.layer.use_fused = False
    model.layer.set_kernel("python")
    assert_same(fused, _streamed_grads(model, x), 1e-10, relative=True)


def test_cached_keys_follow_a_change_of_w_k_between_calls():
    """An optimiser step between two calls on one state changes W_k in place: the slots' keys are recomputed,
    so the continued pass scores with the new W_k, as the plain path does."""
    x = torch.randn(2, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    outputs = []
    for fused in (True, False):
        model = _recommended()
        model.layer.use_fused = fused
        model.eval()
        _, state = model.layer(x[:, :12])
        with torch.no_grad():
            model.layer.scorer.key_proj.weight.mul_(-1.5)
        outputs.append(model.layer(x[:, 12:], state)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-12)
