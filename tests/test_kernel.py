"""The compiled SAB recurrence (``sab_mips.kernel``) against the Python path, its reference twin, in float64:
outputs, every parameter's and the input's gradient, the state it leaves, over both presets, both scorers
and sparsifiers, several schedules, chunk boundaries, replayed and approximate candidates, the
memory-bounded engine and streams of detached windows."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sab_mips.kernel import build_failure
from sab_mips.model import PassOptions, SABConfig, build_model
from sab_mips.model.compiled_path import attention_steps

TOL = 1e-10

SETTINGS = [
    dict(k_top=2, k_att=2, k_trunc=3),
    dict(k_top=3, k_att=1, k_trunc=5, attend_every=2),
    dict(k_top=2, k_att=3, k_trunc=4, slot_value="h_hat"),
    dict(k_top=1, k_att=2, k_trunc=2, k_cand=4, summary_to_state=False),
    dict(k_top=2, k_att=2, k_trunc=7, scorer="cosine", sparsifier="relu"),
    dict(k_top=2, k_att=2, k_trunc=7, scorer="dot", sparsifier="softmax"),
]


def test_the_compiled_recurrence_builds_here():
    assert build_failure() is None


def twins(preset: str = "paper", retrieval: str = "exact", **fields):
    """Two copies of one float64 model: on the Python path and on the compiled recurrence."""
    torch.manual_seed(0)
    python = build_model(SABConfig(preset=preset, input_size=3, output_size=4, hidden_size=8, attn_dim=4,
                                   retrieval=retrieval, **fields), dtype=torch.float64)
    compiled = copy.deepcopy(python)
    python.layer.set_kernel("python")
    compiled.layer.set_kernel("compiled")
    return python, compiled


def chunked_pass(model, x, chunks: int = 1, options: PassOptions | None = None, detach: bool = False):
    """(outputs, {parameter: gradient}, input gradient, final state) of a weighted sum of the outputs of x
    fed in ``chunks`` calls on one state (``detach``: the state detached between calls, as a stream's windows),
    plus the final h (its gradient reaches the last steps through h as well)."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    B, T, _ = x.shape
    state = model.layer.initial_state(B, options, dtype=x.dtype)
    outputs, size = [], -(-T // chunks)
    for a in range(0, T, size):
        if detach and a:
            state.detach()
        features, state = model.layer(x[:, a : a + size], state)
        outputs.append(model.head(features))
    out = torch.cat(outputs, dim=1)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + (state.h ** 2).sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, x.grad, state


def assert_twins_agree(python_result, compiled_result, tol: float = TOL) -> None:
    out_p, grads_p, x_p, state_p = python_result
    out_c, grads_c, x_c, state_c = compiled_result
    torch.testing.assert_close(out_c, out_p, rtol=0, atol=tol)
    assert grads_c.keys() == grads_p.keys()
    for name in grads_p:
        scale = max(grads_p[name].abs().max().item(), 1.0)
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=0, atol=tol * scale, msg=name)
    torch.testing.assert_close(x_c, x_p, rtol=0, atol=tol)
    assert (state_c.t, state_c.attention_steps, state_c.memory.times) == (state_p.t, state_p.attention_steps,
                                                                          state_p.memory.times)
    torch.testing.assert_close(state_c.memory.values(), state_p.memory.values(), rtol=0, atol=tol)
    torch.testing.assert_close(state_c.h, state_p.h, rtol=0, atol=tol)
    torch.testing.assert_close(state_c.c, state_p.c, rtol=0, atol=tol)


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("fields", SETTINGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_compiled_equals_python_in_float64(preset, fields, chunks):
    python, compiled = twins(preset, **fields)
    x = torch.randn(3, 31, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_twins_agree(chunked_pass(python, x, chunks), chunked_pass(compiled, x, chunks))


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_compiled_equals_python_over_detached_windows_of_a_stream(preset):
    python, compiled = twins(preset, k_top=2, k_att=2, k_trunc=4)
    x = torch.randn(2, 45, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_twins_agree(chunked_pass(python, x, 3, detach=True), chunked_pass(compiled, x, 3, detach=True))


@pytest.mark.parametrize("retrieval", ["faiss:HNSW32,efSearch=4,exact_below=0", "simple-lsh:bits=6,tables=2", "faiss:Flat"])
@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_compiled_searches_any_index_as_the_python_path_does(preset, retrieval):
    """Approximate indexes are asked once per attention step from the kernel: the same candidates, the same
    results (the index's own misses included), and the same index afterwards."""
    python, compiled = twins(preset, retrieval=retrieval, k_top=2, k_att=1, k_trunc=4)
    x = torch.randn(3, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    options = PassOptions(record=True)
    result_p, result_c = chunked_pass(python, x, 2, options), chunked_pass(compiled, x, 2, options)
    assert_twins_agree(result_p, result_c)
    record_p, record_c = (r[3].recorder.attention_record(r[3].memory.times) for r in (result_p, result_c))
    assert torch.equal(record_c.candidate_ids, record_p.candidate_ids)
    torch.testing.assert_close(record_c.weights, record_p.weights, rtol=0, atol=1e-6)
    assert result_c[3].index.ntotal == result_p[3].index.ntotal == result_p[3].memory.size
    assert result_c[3].recorder.stats.search_seconds > 0


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_compiled_replays_recorded_candidates(preset):
    """Candidates recorded from an approximate index and replayed: the compiled pass computes what they give,
    as the Python path does."""
    python, compiled = twins(preset, retrieval="simple-lsh:bits=4,tables=1", k_top=2, k_att=1, k_trunc=4, k_cand=4)
    x = torch.randn(3, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    replay = python.run(x, PassOptions(record=True)).record.candidate_ids
    assert (replay < 0).any()  # the index left some candidates empty: padding goes through the kernel too
    options = PassOptions(replay=replay)
    assert_twins_agree(chunked_pass(python, x, 3, options), chunked_pass(compiled, x, 3, options))


def test_compiled_keeps_the_candidates_the_engine_replays():
    python, compiled = twins("recommended", k_top=2, k_att=2, k_trunc=4)
    x = torch.randn(2, 25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kept = [m.run(x, PassOptions(keep_candidates=True)) for m in (python, compiled)]
    states = [m.layer(x, m.layer.initial_state(2, PassOptions(keep_candidates=True), dtype=x.dtype))[1]
              for m in (python, compiled)]
    ids_p, ids_c = (s.recorder.take_candidates() for s in states)
    assert ids_p.dtype == ids_c.dtype == torch.int32 and torch.equal(ids_c, ids_p)
    torch.testing.assert_close(kept[1].logits, kept[0].logits, rtol=0, atol=TOL)


@pytest.mark.parametrize("chunk", [4, 12, 100])
@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_memory_bounded_engine_runs_on_the_compiled_recurrence(preset, chunk):
    """The engine's no-graph forward, kept candidates and chunk-by-chunk sweep (old slots' gradients through
    the memory's shared buffer) give the Python path's loss and gradients."""
    python, compiled = twins(preset, k_top=2, k_att=2, k_trunc=4)
    x = torch.randn(3, 37, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 4, (3, 37), generator=torch.Generator().manual_seed(7))
    results = []
    for model in (python, compiled):
        model.zero_grad()
        out = model.forward_backward(x, y, lambda logits, target: torch.nn.functional.cross_entropy(
            logits.reshape(-1, 4), target.reshape(-1)), chunk=chunk)
        results.append((out.loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=TOL)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=0, atol=TOL * max(1.0, grad.abs().max().item()))


def test_float32_agrees_to_float_tolerance():
    python, compiled = twins("recommended", k_top=3, k_att=2, k_trunc=5)
    python.float(), compiled.float()
    x = torch.randn(4, 50, 3, generator=torch.Generator().manual_seed(8))
    assert_twins_agree(chunked_pass(python, x, 2), chunked_pass(compiled, x, 2), tol=1e-4)


def test_forced_compiled_kernel_refuses_what_it_does_not_cover():
    _, compiled = twins("recommended", k_top=2, k_att=2, k_trunc=4)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="kernel 'compiled' cannot run this pass: retrieval audits"):
        compiled.run(x, PassOptions(audit_every=1, retrieval="faiss:HNSW32"))
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        compiled.layer.set_kernel("fast")


def test_auto_falls_back_to_python_with_one_warning_and_the_same_result():
    python, auto = twins("paper", k_top=2, k_att=2, k_trunc=4)
    auto.layer.set_kernel("auto")
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    options = PassOptions(collect_queries=True)
    with pytest.warns(UserWarning, match="SAB runs on the Python path: collected queries"):
        out = auto.run(x, options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per reason: the second pass says nothing
        auto.run(x, options)
    torch.testing.assert_close(out.logits, python.run(x, options).logits, rtol=0, atol=0)


def test_attention_steps_follow_the_layer_schedule():
    # a slot exists after step k_att - 1; attention every attend_every-th step from then on
    assert attention_steps(0, 8, 2, 3, 0) == [4, 6]
    assert attention_steps(5, 4, 1, 3, 2) == [5, 6, 7, 8]


def test_compiled_pass_gives_the_attention_diagnostics_of_the_python_pass():
    python, compiled = twins("paper", k_top=2, k_att=2, k_trunc=3)
    x = torch.randn(3, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    metrics = [m.run(x, PassOptions(diagnostics=True)).diagnostics.as_metrics() for m in (python, compiled)]
    assert metrics[0].keys() == metrics[1].keys() == {"max_slot_norm", "min_gap_sum", "old_attention"}
    for name in metrics[0]:
        assert metrics[1][name] == pytest.approx(metrics[0][name], rel=1e-9, abs=1e-12)
