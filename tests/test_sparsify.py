"""The sparsifier against its slow reference: values, gradients, the N ≤ K rule and the empty memory."""
import pytest
import torch

from sab_mips.ops.sparsify import relu_sparsify, softmax_topk_weights, sparse_attention_weights

from reference_ops import softmax_topk_weights_reference, sparse_attention_weights_reference

INF = float("inf")


def random_scores(B=6, C=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g, dtype=dtype)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 9, 12])
def test_matches_reference_values_and_gradients(k):
    scores = random_scores()
    scores[1, 5:] = -INF  # a row with only 5 valid slots (padding)
    scores[2, :] = -INF  # a row with none
    fast_in = scores.clone().requires_grad_()
    ref_in = scores.clone().requires_grad_()
    fast = sparse_attention_weights(fast_in, k)
    ref = sparse_attention_weights_reference(ref_in, k)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    upstream = random_scores(seed=1)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(fast_in.grad, ref_in.grad, rtol=0, atol=1e-12)
    assert torch.isfinite(fast_in.grad).all()


def test_exactly_k_nonzero_when_more_than_k_slots():
    scores = random_scores(B=20, C=12)
    for k in range(1, 12):
        weights = sparse_attention_weights(scores, k)
        assert ((weights > 0).sum(dim=1) == k).all()
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-5)
        # the non-zero weights sit on the K largest scores
        top = scores.topk(k, dim=1).indices
        assert (weights.gather(1, top) > 0).all()


def test_official_defect_is_not_copied():
    """The released code subtracts the K-th score, leaving only K−1 non-zero weights; we keep K."""
    weights = sparse_attention_weights(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), k=2)
    assert (weights > 0).sum() == 2
    torch.testing.assert_close(weights, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_valid", [1, 2, 3])
def test_rule_when_n_at_most_k(n_valid):
    """N ≤ K: δ = min − 1, every slot positive, finite, normalised (never raw scores)."""
    scores = torch.full((1, 5), -INF, dtype=torch.float64)
    scores[0, :n_valid] = torch.tensor([5.0, -2.0, 0.5][:n_valid], dtype=torch.float64)
    weights = sparse_attention_weights(scores, k=3)
    assert torch.isfinite(weights).all()
    assert (weights[0, :n_valid] > 0).all() and (weights[0, n_valid:] == 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    low = scores[0, :n_valid].min()
    expected = (scores[0, :n_valid] - (low - 1)) / (scores[0, :n_valid] - (low - 1)).sum()
    torch.testing.assert_close(weights[0, :n_valid], expected, rtol=0, atol=1e-6)


def test_empty_memory_gives_zero_weights_and_finite_gradients():
    scores = torch.full((3, 4), -INF, dtype=torch.float64, requires_grad=True)
    weights = sparse_attention_weights(scores, k=2)
    assert (weights == 0).all()
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad == 0).all()


def test_gradient_reaches_only_the_top_k_plus_one():
    """The K selected scores and the (K+1)-th (through δ) receive gradient; every other score gets zero."""
    scores = random_scores(B=4, C=7).requires_grad_()
    weights = sparse_attention_weights(scores, k=3)
    (weights * torch.arange(7.0, dtype=torch.float64)).sum().backward()
    top = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(4, dim=1).indices, True)
    assert (scores.grad[~top] == 0).all()
    assert (scores.grad[top] != 0).all()


def test_weights_are_shift_invariant_and_so_is_the_gradient():
    """Adding a constant to every score changes nothing, so the gradient sums to zero in each row."""
    scores = random_scores(B=5, C=8).requires_grad_()
    weights = sparse_attention_weights(scores, k=3)
    torch.testing.assert_close(sparse_attention_weights(scores.detach() + 7.5, k=3), weights.detach(), rtol=0, atol=1e-12)
    (weights * random_scores(B=5, C=8, seed=9)).sum().backward()
    torch.testing.assert_close(scores.grad.sum(dim=1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_what_the_fused_backward_reuses_is_what_it_claims(padded):
    """``relu_sparsify``'s mask, sum and δ's column, against the definitions (δ from a full sort): the fused
    step's backward reads them instead of recomputing."""
    scores = random_scores(B=4, C=7, seed=5)
    valid = None
    if padded:  # 3 real slots (N ≤ K), 5, none, all 7
        valid = torch.ones(4, 7, dtype=torch.bool)
        valid[0, 3:], valid[1, 5:], valid[2, :] = False, False, False
    out = relu_sparsify(scores, 3, 1e-7, valid)
    for b in range(4):
        real = scores[b] if valid is None else scores[b][valid[b]]
        if not len(real):
            assert not out.active[b].any() and out.total[b] == 0 and (out.weights[b] == 0).all()
            continue
        ranked = real.sort(descending=True).values
        delta = ranked[3] if len(real) > 3 else ranked[-1] - 1.0
        assert scores[b, out.source[b, 0]] == (delta if len(real) > 3 else ranked[-1])
        expected_active = scores[b] > delta if valid is None else (scores[b] > delta) & valid[b]
        assert torch.equal(out.active[b], expected_active) and torch.equal(out.active[b], out.weights[b] > 0)
        assert out.active[b].sum() == min(3, len(real))
        torch.testing.assert_close(out.total[b, 0], (real - delta).clamp(min=0).sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 6, 8])
def test_gradcheck_sparse_weights_float64(k):
    """Away from ties the sparsifier is smooth; its gradient (δ included) is the true one."""
    scores = random_scores(B=3, C=6, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: sparse_attention_weights(s, k), (scores,))
    padded = scores.detach().clone()
    padded[:, 4:] = -INF
    valid = torch.isfinite(padded)
    assert torch.autograd.gradcheck(
        lambda s: sparse_attention_weights(s.masked_fill(~valid, -INF), k), (scores.detach().clone().requires_grad_(),)
    )


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be >= 1"):
        sparse_attention_weights(torch.zeros(1, 3), k=0)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 9, 12])
def test_softmax_top_k_matches_reference_values_and_gradients(k):
    scores = random_scores()
    scores[1, 5:] = -INF  # a row with only 5 valid slots (padding)
    scores[2, :] = -INF  # a row with none
    fast_in, ref_in = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    fast, ref = softmax_topk_weights(fast_in, k), softmax_topk_weights_reference(ref_in, k)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    upstream = random_scores(seed=1)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(fast_in.grad, ref_in.grad, rtol=0, atol=1e-12)
    assert torch.isfinite(fast_in.grad).all() and (fast[2] == 0).all()
    valid_rows = [0, 1, 3, 4, 5]
    assert ((fast[valid_rows] > 0).sum(dim=1) == torch.tensor([min(k, 9), min(k, 5), *[min(k, 9)] * 3])).all()


@pytest.mark.parametrize("explore", [0, 2])
def test_softmax_top_k_without_padding_skips_the_masks_and_gives_the_same_bits(explore):
    scores = random_scores()
    fast_in, masked_in = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    fast = softmax_topk_weights(fast_in, 4, explore=explore, all_valid=True)
    masked = softmax_topk_weights(masked_in, 4, explore=explore)
    assert torch.equal(fast, masked)
    upstream = random_scores(seed=1)
    (fast * upstream).sum().backward()
    (masked * upstream).sum().backward()
    assert torch.equal(fast_in.grad, masked_in.grad)
    torch.testing.assert_close(fast, softmax_topk_weights_reference(scores, 4, explore), rtol=0, atol=1e-12)


def test_softmax_top_k_gradcheck_and_bounded_gradient_at_ties():
    scores = random_scores(B=3, C=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: softmax_topk_weights(s, 3), (scores,))
    # exact ties at the threshold: the ReLU rule's gradient grows like 1/gap, the softmax's stays bounded
    tied = torch.tensor([[1.0, 1.0 - 1e-9, 1.0 - 2e-9, 0.0]], dtype=torch.float64)
    grads = {}
    for name, rule in (("relu", sparse_attention_weights), ("softmax", softmax_topk_weights)):
        s = tied.clone().requires_grad_()
        rule(s, 2)[0, 0].backward()
        grads[name] = s.grad.abs().max().item()
    assert grads["softmax"] < 1 and grads["relu"] > 1e6
