"""The memory-bounded engine against plain autograd (its slow twin), and SAB as a streaming layer."""
import pytest
import torch

from sab_mips import PassOptions, SABConfig, build_model
from sab_mips.tasks import get_task

from helpers import assert_same

BASE = dict(input_size=3, output_size=4, hidden_size=6, attn_dim=5, k_top=2, k_att=2, k_trunc=4)


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(SABConfig(**{**BASE, **kwargs}), dtype=torch.float64)


def data(T=60, B=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, 3, dtype=torch.float64, generator=g), torch.randn(B, T, 4, dtype=torch.float64, generator=g)


def loss_fn(logits, y):
    return ((logits - y) ** 2).mean()


def plain_grads(model, x, y, **options):
    model.zero_grad()
    x = x.clone().requires_grad_()
    loss = loss_fn(model.run(x, PassOptions(**options)).logits, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad


def engine_grads(model, x, y, chunk, **options):
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = model.forward_backward(x, y, loss_fn, chunk=chunk, options=PassOptions(**options))
    return out.loss, {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad


@pytest.mark.parametrize("chunk", [4, 8, 28, 1000])
@pytest.mark.parametrize("cfg", [
    dict(preset="paper"),
    dict(preset="paper", retrieval="faiss:Flat", k_cand=4),
    dict(preset="paper", scorer="additive"),
    dict(preset="paper", scorer="official", attend_every=2),
    dict(preset="recommended"),
    dict(preset="paper", slot_value="h_hat", k_att=1, k_trunc=5),
    dict(preset="paper", summary_to_state=False, k_att=1),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_engine_equals_plain_autograd_float64(cfg, chunk):
    model = make(**cfg)
    x, y = data()
    assert_same(engine_grads(model, x, y, chunk), plain_grads(model, x, y), 1e-10, relative=True)


def test_engine_replays_candidates_kept_across_blocks(monkeypatch):
    """Kept candidate ids are stacked in blocks; with blocks of 7 steps (60 attention steps: 8 full blocks and
    a partial one) the engine still replays each step's own ids."""
    from sab_mips.model import recorder

    monkeypatch.setattr(recorder, "KEEP_BLOCK", 7)
    model = make(preset="paper")
    x, y = data()
    assert_same(engine_grads(model, x, y, 8), plain_grads(model, x, y), 1e-10, relative=True)


@pytest.mark.parametrize("retrieval", ["simple-lsh:bits=12,tables=1", "faiss:HNSW32,efSearch=16,exact_below=0"])
def test_engine_with_an_approximate_index_and_its_recorded_candidates(retrieval):
    """The engine searches like a plain pass; replaying a plain pass's candidates it matches that pass."""
    model = make(preset="paper", retrieval=retrieval, k_att=1, k_cand=4)
    x, y = data(T=80)
    assert_same(engine_grads(model, x, y, 8), plain_grads(model, x, y), 1e-10, relative=True)
    record = model.run(x, PassOptions(record=True)).record
    assert_same(engine_grads(model, x, y, 12, replay=record.candidate_ids),
                plain_grads(model, x, y, replay=record.candidate_ids), 1e-10, relative=True)


def test_engine_while_exploring_draws_like_a_plain_pass():
    model = make(preset="recommended", explore=3, k_att=1)
    x, y = data(T=50)
    torch.manual_seed(7)
    engine = engine_grads(model, x, y, 8)
    torch.manual_seed(7)
    assert_same(engine, plain_grads(model, x, y), 1e-10, relative=True)


def test_engine_reports_what_the_pass_measured():
    model = make(preset="paper", retrieval="simple-lsh:bits=12,tables=1", k_att=1)
    x, y = data(T=40)
    out = model.forward_backward(x, y, loss_fn, chunk=8, options=PassOptions(record=True, audit_every=1, diagnostics=True))
    plain = model.run(x, PassOptions(record=True, audit_every=1, diagnostics=True))
    torch.testing.assert_close(out.logits, plain.logits.detach(), rtol=0, atol=1e-12)
    assert torch.equal(out.record.candidate_ids, plain.record.candidate_ids)
    assert out.stats.as_metrics()["recall"] == pytest.approx(plain.stats.as_metrics()["recall"])
    assert out.diagnostics.as_metrics() == pytest.approx(plain.diagnostics.as_metrics())
    assert out.loss == pytest.approx(loss_fn(plain.logits, y).item())


@pytest.mark.parametrize("name", ["copy", "adding"])
@pytest.mark.parametrize("split", [False, True], ids=["whole-loss", "chunk-loss"])
def test_engine_on_a_task_loss(name, split):
    """With the task's loss taken whole, or chunk by chunk in the sweep (``chunk_loss``), the engine gives
    plain autograd's loss and gradients."""
    task = get_task(name)
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", input_size=task.input_size, output_size=task.output_size,
                                  hidden_size=8, k_top=2, k_att=2, k_trunc=3), dtype=torch.float64)
    x, y = task.make_batch(12, 2, torch.Generator().manual_seed(0))
    x, y = x.double(), (y.double() if y.is_floating_point() else y)
    model.zero_grad()
    loss = task.loss(model(x), y)
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model.forward_backward(x, y, task.loss, chunk=6, chunk_loss=task.chunk_loss if split else None)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=0, atol=1e-10 * max(plain[n].abs().max().item(), 1e-30))


def test_the_dense_baseline_has_no_engine():
    model = make(model="dense")
    x, y = data(T=10)
    with pytest.raises(ValueError, match="engine does not apply"):
        model.forward_backward(x, y, loss_fn)


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_a_sequence_fed_in_chunks_equals_one_call(preset):
    model = make(preset=preset, k_att=1)
    model.eval()
    x, _ = data(T=45)
    whole, _ = model.layer(x)
    state, parts = None, []
    for a, b in ((0, 7), (7, 20), (20, 45)):  # chunk boundaries off the truncation grid too
        features, state = model.layer(x[:, a:b], state)
        parts.append(features)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=0, atol=1e-12)
    assert state.t == 45 and state.memory.size == 45


def test_streaming_with_a_detached_state_keeps_the_memory_and_cuts_the_gradient():
    model = make(preset="paper", k_att=1)
    x, _ = data(T=30)
    x = x.clone().requires_grad_()
    first, state = model.layer(x[:, :15])
    second, state = model.layer(x[:, 15:], state.detach())
    second.sum().backward()
    assert x.grad[:, :15].abs().sum() == 0 and x.grad[:, 15:].abs().sum() > 0
    assert state.memory.size == 30  # the first window's slots stayed readable


def test_predict_in_chunks_equals_run():
    model = make(preset="paper", retrieval="faiss:Flat", k_att=1)
    model.eval()
    x, _ = data(T=33)
    out = model.predict(x, chunk=5, options=PassOptions(record=True))
    torch.testing.assert_close(out.logits, model.run(x).logits.detach(), rtol=0, atol=1e-12)
    assert out.record.candidate_ids.shape[0] == 32


def test_training_uses_the_engine_as_configured(tmp_path):
    from sab_mips import TrainConfig, Trainer
    from sab_mips.training.rundir import read_metrics

    model_cfg = SABConfig(preset="paper", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8)
    base = dict(task="copy", T=8, batch_size=3, steps=3, eval_every=3, eval_batches=1, seed=1)
    losses = {}
    for engine in ("off", "on"):
        trainer = Trainer(model_cfg, TrainConfig(**base, engine=engine, engine_chunk=6), tmp_path / engine, progress=False)
        assert trainer.uses_engine(28) == (engine == "on")
        trainer.run()
        losses[engine] = [r["loss"] for r in read_metrics(tmp_path / engine / "metrics.jsonl") if r["split"] == "train"]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-5)
    auto = Trainer(model_cfg, TrainConfig(**base), tmp_path / "auto", progress=False)
    assert not auto.uses_engine(1999) and auto.uses_engine(2000)


def test_engine_on_needs_sab(tmp_path):
    from sab_mips import TrainConfig, Trainer
    from sab_mips.errors import UserError

    with pytest.raises(UserError, match="engine 'on' needs model 'sab'"):
        Trainer(SABConfig(model="lstm", hidden_size=8), TrainConfig(task="copy", T=3, engine="on"), tmp_path)
