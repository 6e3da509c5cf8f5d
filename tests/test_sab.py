"""SABLSTM (fast path) against the obvious step-by-step twin, and the defining property of SAB."""
import pytest
import torch

from sab_mips import DenseAttentionLSTM, SABConfig, SABLSTM, build_model

from helpers import outputs_and_grads
from reference_models import sab_forward_reference


def make(cfg_kwargs, dtype=torch.float64, seed=0, model="sab"):
    torch.manual_seed(seed)
    cfg = SABConfig(model=model, input_size=3, output_size=4, hidden_size=6, attn_dim=5, **cfg_kwargs)
    return build_model(cfg, dtype=dtype)


PAPER = dict(preset="paper")
CASES = [
    dict(k_top=2, k_att=2, k_trunc=4, attend_every=1, scorer="dot", **PAPER),
    dict(k_top=1, k_att=1, k_trunc=3, attend_every=1, scorer="dot", **PAPER),
    dict(k_top=3, k_att=3, k_trunc=100, attend_every=2, scorer="dot", **PAPER),
    dict(k_top=2, k_att=2, k_trunc=5, attend_every=1, scorer="additive", **PAPER),
    dict(k_top=2, k_att=2, k_trunc=5, attend_every=3, scorer="official", **PAPER),
    # every option of the recommended preset, alone on the paper's SAB and all together
    dict(k_top=2, k_att=2, k_trunc=4, scorer="cosine", temperature=3.0, **PAPER),
    dict(k_top=2, k_att=2, k_trunc=4, sparsifier="softmax", **PAPER),
    dict(k_top=1, k_att=1, k_trunc=3, sparsifier="softmax", **PAPER),  # N <= K at the first steps
    dict(k_top=2, k_att=2, k_trunc=4, slot_value="h_hat", **PAPER),
    dict(k_top=2, k_att=2, k_trunc=4, forget_bias=1.0, **PAPER),
    dict(k_top=2, k_att=2, k_trunc=4, summary_to_state=False, **PAPER),
    dict(k_top=2, k_att=2, k_trunc=4, head_hidden=7, **PAPER),
    dict(k_top=2, k_att=2, k_trunc=4, preset="recommended"),
    dict(k_top=3, k_att=1, k_trunc=5, attend_every=2, scorer="additive", preset="recommended"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_fast_path_equals_reference_float64(case):
    model = make(case)
    x = torch.randn(3, 23, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast = outputs_and_grads(model, x, model, input_grad=True)
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp), input_grad=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-10)
    assert fast[1].keys() == ref[1].keys()
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], ref[1][name], rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(fast[2], ref[2], rtol=0, atol=1e-10)


def test_fast_path_equals_reference_float32():
    model = make(CASES[0], dtype=torch.float32)
    x = torch.randn(4, 30, 3, generator=torch.Generator().manual_seed(2))
    fast = outputs_and_grads(model, x, model, input_grad=True)
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp), input_grad=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-5)
    # float32 rounding, amplified by the sparsifier's 1/Σ(a − δ) factor, accumulates over the 30 steps:
    # compare relative to each gradient's scale (the float64 test above is the tight one).
    for name in fast[1]:
        scale = ref[1][name].abs().max().item()
        torch.testing.assert_close(fast[1][name], ref[1][name], rtol=0, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("scorer, to_state", [("dot", True), ("additive", True), ("cosine", False)])
def test_dense_attention_equals_reference(scorer, to_state):
    model = make(dict(k_att=2, scorer=scorer, summary_to_state=to_state), model="dense")
    assert isinstance(model, DenseAttentionLSTM)
    x = torch.randn(2, 15, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fast = outputs_and_grads(model, x, model, input_grad=True)
    ref = outputs_and_grads(model, x, lambda inp: sab_forward_reference(model, inp), input_grad=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-10)
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], ref[1][name], rtol=0, atol=1e-10, msg=name)


def reachable_inputs(record, b, loss_step, k_trunc, connected="candidate_ids"):
    """Input steps that the loss at ``loss_step`` depends on for sequence b, derived from the record.

    Within a segment the chain carries everything forward; across segments only selected slots do.
    """
    seg = lambda t: (t // k_trunc) * k_trunc  # noqa: E731 - first step of t's segment
    # With C = K+1 candidates, every candidate is connected: K through their weights, the (K+1)-th
    # through δ (when N ≤ K, δ depends on the lowest slot, so again every candidate is connected).
    selected_at = {}
    for s, t in enumerate(record.steps.tolist()):
        selected_at[t] = [int(i) for i in getattr(record, connected)[s, b] if i >= 0]
    inputs, seen_slots, frontier = set(), set(), [loss_step]
    while frontier:
        end = frontier.pop()
        inputs.update(range(seg(end), end + 1))
        for t in range(seg(end), end + 1):
            for slot in selected_at.get(t, []):
                if slot not in seen_slots:
                    seen_slots.add(slot)
                    frontier.append(int(record.slot_times[slot]))
    return inputs


@pytest.mark.parametrize("sparsifier", ["relu", "softmax"])
def test_gradient_flows_only_through_selected_slots(sparsifier):
    """A late loss has zero gradient w.r.t. an early input exactly when no selected slot connects them.

    relu: all C = K+1 candidates are connected (the (K+1)-th through δ); softmax: only the K selected."""
    k_trunc = 4
    # Sparse enough (K=1, attention every 6th step) that some far inputs are connected and some are not.
    model = make(dict(k_top=1, k_att=4, k_trunc=k_trunc, attend_every=6, sparsifier=sparsifier))
    B, T = 8, 40
    x = torch.randn(B, T, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    logits, record = model(x, return_attention=True)
    logits[:, -1].sum().backward()
    connected_early, disconnected_early = 0, 0
    for b in range(B):
        reach = reachable_inputs(record, b, T - 1, k_trunc, "candidate_ids" if sparsifier == "relu" else "slot_ids")
        grad_norm = x.grad[b].abs().sum(dim=1)  # (T,)
        for u in range(T):
            if u in reach:
                assert grad_norm[u] > 0, f"sequence {b}: input {u} is connected but has zero gradient"
            else:
                assert grad_norm[u] == 0, f"sequence {b}: input {u} is not connected but has gradient"
        early = [u for u in range(T - 2 * k_trunc)]
        connected_early += sum(u in reach for u in early)
        disconnected_early += sum(u not in reach for u in early)
    # the test must see both cases: far inputs reached through slots, and far inputs cut off
    assert connected_early > 0 and disconnected_early > 0


def test_without_memory_truncation_cuts_all_long_range_gradient():
    model = make(dict(k_top=2, k_att=100, k_trunc=5))  # no slot is ever written before T
    x = torch.randn(2, 20, 3, dtype=torch.float64, requires_grad=True)
    model(x)[:, -1].sum().backward()
    # the last chunk of k_trunc = 5 steps (cut before step 15) reaches the loss, every one of its inputs
    assert (x.grad[:, :15] == 0).all() and (x.grad[:, 15:].abs().sum(dim=2) > 0).all()


def test_record_shapes_and_sparsity():
    model = make(dict(k_top=2, k_att=3, k_trunc=6))
    logits, record = model(torch.randn(5, 20, 3, dtype=torch.float64), return_attention=True)
    assert logits.shape == (5, 20, 4)
    S = len(record.steps)
    assert record.steps.tolist() == list(range(3, 20))  # first slot written at step 2
    assert record.slot_ids.shape == (S, 5, 2) and record.weights.shape == (S, 5, 2)
    assert record.candidate_ids.shape == (S, 5, 3)
    assert record.slot_times.tolist() == [2, 5, 8, 11, 14, 17]
    # one slot until step 5: the N ≤ K rule puts all weight on it
    assert (record.weights[0, :, 0] > 0.99).all() and (record.slot_ids[0, :, 1] == -1).all()
    # later: exactly K slots selected
    assert (record.slot_ids[-1] >= 0).all()
    assert torch.allclose(record.weights[-1].sum(dim=1), torch.ones(5), atol=1e-3)  # Σ/(Σ+ε)
    amap = record.attention_map(b=0, T=20)
    assert amap.shape == (20, 20) and torch.allclose(amap[3:].sum(dim=1), torch.ones(17), atol=1e-3)


def test_empty_memory_gives_zero_summary():
    model = make(dict(k_top=2, k_att=50, k_trunc=5))
    logits, record = model(torch.randn(2, 10, 3, dtype=torch.float64), return_attention=True)
    assert len(record.steps) == 0 and len(record.slot_times) == 0
    # no summary anywhere: the head's s-half sees zeros, so logits equal a head on [h ; 0]
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x), sab_forward_reference(model, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [torch.zeros(2, 5), torch.zeros(2, 5, 4), torch.zeros(0, 5, 3), "text"])
def test_input_checks(bad):
    model = make(dict(k_top=2))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, T, 3\)|needs B >= 1"):
        model(bad)


def test_collect_memories():
    model = make(dict(k_top=2, k_att=2, k_trunc=4))
    x = torch.randn(3, 11, 3, dtype=torch.float64)
    out = model.collect_memories(x)
    assert out["keys"].shape == (3, 5, 5)  # (B, N, d_k): the keys the index held
    assert out["queries"].shape == (9, 3, 5)  # (S, B, d_k)
    # they pose the model's own MIPS problem: the record's candidates are their exact top K+1
    _, record = model(x, return_attention=True)
    scores = torch.einsum("sbd,bnd->sbn", out["queries"], out["keys"])
    for s, t in enumerate(record.steps.tolist()):
        n = sum(1 for u in record.slot_times.tolist() if u < t)
        top = scores[s, :, :n].topk(min(3, n), dim=1).indices.sort(dim=1).values
        assert torch.equal(top, record.candidate_ids[s, :, : min(3, n)].sort(dim=1).values)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="k_top must be an integer >= 1"):
        SABConfig(k_top=0)
    with pytest.raises(ValueError, match="k_trunc must be an integer >= 1"):
        SABConfig(k_trunc=0)
    with pytest.raises(ValueError, match="unknown scorer 'cos'; valid choices: dot, cosine, additive, official"):
        SABConfig(scorer="cos")
    with pytest.raises(ValueError, match="temperature applies to scorer cosine only, not 'dot'"):
        SABConfig(scorer="dot", temperature=2.0)
    with pytest.raises(ValueError, match="unknown preset 'best'; valid choices: paper, recommended"):
        SABConfig(preset="best")
    with pytest.raises(ValueError, match="unknown model"):
        SABConfig(model="gru")
    assert "k_top=5" in repr(SABLSTM(SABConfig()))
