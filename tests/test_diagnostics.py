"""Attention diagnostics: by hand, and logged with every training update."""
import pytest
import torch

from sab_mips import PassOptions, SABConfig, TrainConfig, build_model
from sab_mips.model.diagnostics import AttentionDiagnostics
from sab_mips.tasks import TASKS, batch_generator
from sab_mips.training import train
from sab_mips.training.rundir import load_checkpoint, read_metrics


def test_diagnostics_by_hand():
    """K=1, a slot every 2 steps, k_trunc=3. At t=9, slot 0 (written at step 1) is 8 steps old, slot 3
    (written at step 7) 2 steps old."""
    d = AttentionDiagnostics(k_top=1, k_att=2, k_trunc=3)
    d.slot(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    ids = torch.tensor([[0, 3], [3, -1]])
    scores = torch.tensor([[2.0, 1.5], [1.0, 0.0]])
    weights = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    d.attention(9, ids, scores, weights)
    m = d.as_metrics()
    assert m["max_slot_norm"] == 5.0
    assert m["min_gap_sum"] == pytest.approx(0.5)  # sequence 0: δ = 1.5, gap 0.5; sequence 1 has one slot
    assert m["old_attention"] == pytest.approx(0.75 / 2.0)


def test_a_pass_returns_diagnostics_and_the_paper_model_shows_growing_slots():
    """The paper's slots hold h = ĥ + s, s a sum of older slots, so they can grow without bound. Made
    exact here: every gate saturated, the input ignored, so ĥ → v = (1, ..., 1); W_k = W_q, so every score is
    positive and the two largest (newest) slots win, δ the third. Slots are then multiples α_t v with
    α_t = 1 + (2/3) α_{t−1} + (1/3) α_{t−2} once α grows by a per step: a = 1 − a/3, a = 3/4."""
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", input_size=3, output_size=2, hidden_size=8, k_top=2, k_att=1,
                                  k_trunc=4))
    with torch.no_grad():
        cell = model.layer.cell
        for weight in (cell.weight_ih, cell.weight_hh, cell.bias_hh):
            weight.zero_()
        cell.bias_ih.fill_(10.0)
        model.layer.scorer.key_proj.weight.copy_(model.layer.scorer.query_proj.weight)
    x = torch.randn(2, 60, 3)
    out = model.run(x, PassOptions(diagnostics=True))
    m = out.diagnostics.as_metrics()
    assert set(m) == {"min_gap_sum", "max_slot_norm", "old_attention"}
    norms = torch.stack(out.diagnostics.slots).norm(dim=2)  # (T, B): a slot every step
    assert (norms[1:] > norms[:-1]).all()  # every slot larger than the one before
    torch.testing.assert_close(norms[-1] - norms[-2], torch.full((2,), 0.75 * 8 ** 0.5), rtol=1e-3, atol=0)
    # the last slot is the largest, far beyond any LSTM state (|h| < sqrt(H))
    assert m["max_slot_norm"] == pytest.approx(float(norms[-1].max())) and m["max_slot_norm"] > 10 * 8 ** 0.5
    assert m["old_attention"] == 0.0  # the newest slots (1 and 2 steps old, k_trunc = 4) take all the weight
    assert model.run(x).diagnostics is None  # only when asked


def test_training_logs_diagnostics(tmp_path):
    """What update 2 logs is the diagnostics of a pass of the step-1 checkpoint on update 2's batch."""
    model_cfg = SABConfig(hidden_size=8, k_top=2, k_att=1, k_trunc=3, attn_dim=8)
    cfg = TrainConfig(task="copy", T=6, batch_size=2, steps=1, eval_batches=1, checkpoint_every=1)
    train(model_cfg, cfg, tmp_path / "1", progress=False)
    train(model_cfg, cfg.replace(steps=2), tmp_path / "2", progress=False)
    lines = [r for r in read_metrics(tmp_path / "2" / "metrics.jsonl") if r["split"] == "train"]
    assert all({"grad_norm", "param_norm", "update_norm"} <= set(r) for r in lines)
    model = build_model(model_cfg.replace(input_size=10, output_size=10))  # the copy task's sizes
    model.load_state_dict(load_checkpoint(tmp_path / "1" / "checkpoint.pt")["model_state"])
    x, _ = TASKS["copy"].make_batch(6, 2, batch_generator(cfg.seed, 1, "train"))  # update i draws batch i − 1
    expected = model.run(x, PassOptions(diagnostics=True)).diagnostics.as_metrics()
    assert set(expected) == {"min_gap_sum", "max_slot_norm", "old_attention"}
    assert {name: lines[1][name] for name in expected} == pytest.approx(expected, rel=1e-5)


def test_update_norm_is_how_far_the_weights_moved(tmp_path):
    """update_norm is |θ_after − θ_before| of each update and param_norm |θ_after|: checked against the
    checkpoints of two consecutive updates."""
    model_cfg = SABConfig(hidden_size=8, k_top=2, k_att=1, k_trunc=3, attn_dim=8)
    flat = []
    for steps in (1, 2):
        train(model_cfg, TrainConfig(task="copy", T=6, batch_size=2, steps=steps, eval_batches=1, checkpoint_every=1),
              tmp_path / str(steps), progress=False)
        model = build_model(model_cfg.replace(input_size=10, output_size=10))  # the copy task's sizes
        model.load_state_dict(load_checkpoint(tmp_path / str(steps) / "checkpoint.pt")["model_state"])
        flat.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    second = [r for r in read_metrics(tmp_path / "2" / "metrics.jsonl") if r["split"] == "train"][-1]
    assert second["update_norm"] == pytest.approx(float((flat[1] - flat[0]).norm()), rel=1e-5)
    assert second["param_norm"] == pytest.approx(float(flat[1].norm()), rel=1e-5)
    assert second["update_norm"] > 0
