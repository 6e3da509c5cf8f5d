"""Attention diagnostics: by hand, and logged with every training update."""
import pytest
import torch

from sab_mips import SABConfig, TrainConfig, build_model
from sab_mips.model.diagnostics import AttentionDiagnostics
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
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", input_size=3, output_size=2, hidden_size=8, k_top=2, k_att=1,
                                  k_trunc=4))
    x = torch.randn(2, 60, 3)
    out = model.run(x, diagnostics=True)
    m = out.diagnostics.as_metrics()
    assert set(m) == {"min_gap_sum", "max_slot_norm", "old_attention"}
    assert 0 < m["old_attention"] <= 1
    assert model.run(x).diagnostics is None  # only when asked


def test_training_logs_diagnostics(tmp_path):
    model_cfg = SABConfig(hidden_size=8, k_top=2, k_att=1, k_trunc=3, attn_dim=8)
    train(model_cfg, TrainConfig(task="copy", T=6, batch_size=2, steps=2, eval_batches=1), tmp_path, progress=False)
    lines = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert all({"min_gap_sum", "max_slot_norm", "old_attention", "grad_norm", "param_norm", "update_norm"} <= set(r)
               for r in lines)


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
