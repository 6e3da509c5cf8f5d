"""Presets: the paper's SAB one argument away, explicit options win, old runs keep the paper's semantics."""
import pytest
import torch

from sab_mips import SABConfig, TrainConfig, build_model
from sab_mips.model.config import PRESETS
from sab_mips.training import load_run, train
from sab_mips.training.rundir import load_checkpoint, save_checkpoint


def test_a_preset_sets_every_option_left_unset():
    for name, values in PRESETS.items():
        cfg = SABConfig(preset=name)
        assert {k: getattr(cfg, k) for k in values} == values
    assert SABConfig().preset == "recommended"
    mixed = SABConfig(preset="paper", sparsifier="softmax")
    assert mixed.sparsifier == "softmax" and mixed.scorer == "dot"


def test_temperature_belongs_to_the_cosine_scorer():
    assert SABConfig(preset="paper", scorer="cosine").temperature == 5.0
    assert SABConfig(preset="paper").temperature is None
    assert SABConfig(preset="paper", scorer="cosine").replace(scorer="dot").temperature is None


def test_replace_moves_options_that_followed_the_preset():
    rec = SABConfig(preset="recommended", slot_value="h_hat")
    paper = rec.replace(preset="paper")
    assert {k: getattr(paper, k) for k in PRESETS["paper"] if k != "slot_value"} == {
        k: v for k, v in PRESETS["paper"].items() if k != "slot_value"}
    assert paper.slot_value == "h_hat"  # set explicitly (not the recommended value): it stays
    assert paper.replace(preset="recommended").to_dict() == SABConfig(preset="recommended", slot_value="h_hat").to_dict()


def test_the_paper_preset_builds_the_paper_model():
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", input_size=3, output_size=2, hidden_size=4))
    assert type(model.layer.scorer).__name__ == "DotScorer"
    assert "sparsifier='relu'" in repr(model) and "forget_bias=0.0" in repr(model)
    torch.manual_seed(0)
    biased = build_model(SABConfig(preset="paper", forget_bias=1.0, input_size=3, output_size=2, hidden_size=4))
    torch.testing.assert_close(biased.layer.cell.bias_ih[4:8] - model.layer.cell.bias_ih[4:8], torch.ones(4))
    torch.testing.assert_close(biased.layer.cell.bias_ih[:4], model.layer.cell.bias_ih[:4])


@pytest.mark.parametrize("model", ["lstm", "tbptt"])
def test_forget_bias_reaches_the_baselines(model):
    torch.manual_seed(0)
    plain = build_model(SABConfig(model=model, preset="paper", input_size=3, output_size=2, hidden_size=4))
    torch.manual_seed(0)
    biased = build_model(SABConfig(model=model, preset="paper", forget_bias=2.0, input_size=3, output_size=2,
                                   hidden_size=4))
    torch.testing.assert_close(biased.lstm.bias_ih_l0[4:8] - plain.lstm.bias_ih_l0[4:8], 2 * torch.ones(4))


def test_a_run_saved_before_presets_loads_with_the_paper_semantics(tmp_path):
    """A checkpoint whose model config has none of the preset fields (every run before presets) is the paper's
    SAB: it loads, and it resumes."""
    model_cfg = SABConfig(preset="paper", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8)
    cfg = TrainConfig(task="copy", T=3, batch_size=2, steps=1, eval_batches=1)
    train(model_cfg, cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for name in ("preset", "sparsifier", "slot_value", "forget_bias", "temperature"):
        del state["model_config"][name]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    model, *_ = load_run(tmp_path)
    assert model.config.preset == "paper" and model.config.sparsifier == "relu" and model.config.scorer == "dot"


def test_resuming_a_run_saved_before_presets_from_the_command_line(tmp_path, capsys):
    import json

    from sab_mips.cli import main

    run = tmp_path / "old"
    assert main(["train", "--preset", "paper", "--hidden-size", "8", "--k-top", "2", "--task", "copy", "--T", "3",
                 "--batch-size", "2", "--steps", "1", "--eval-batches", "1", "--no-progress", "--run-dir", str(run)]) == 0
    for name in ("config.json", "checkpoint.pt"):  # strip the preset fields, as an old run would hold them
        if name == "config.json":
            saved = json.loads((run / name).read_text())
            for field in ("preset", "sparsifier", "slot_value", "forget_bias", "temperature"):
                del saved["model"][field]
            (run / name).write_text(json.dumps(saved))
        else:
            state = load_checkpoint(run / name)
            for field in ("preset", "sparsifier", "slot_value", "forget_bias", "temperature"):
                del state["model_config"][field]
            save_checkpoint(run / name, state)
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "2", "--no-progress"]) == 0
    assert "steps=2" in capsys.readouterr().out


def test_weights_saved_before_the_layer_split_load():
    """Runs saved before SABLSTM held an SABLayer have "cell.*" and "scorer.*" at the top level."""
    torch.manual_seed(0)
    model = build_model(SABConfig(preset="paper", input_size=3, output_size=2, hidden_size=4))
    old = {k.replace("layer.", "", 1): v for k, v in model.state_dict().items()}
    assert "cell.weight_ih" in old and "scorer.query_proj.weight" in old
    torch.manual_seed(1)
    fresh = build_model(SABConfig(preset="paper", input_size=3, output_size=2, hidden_size=4))
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("model", ["sab", "lstm"])
def test_chrono_initialisation(model):
    torch.manual_seed(0)
    net = build_model(SABConfig(model=model, preset="paper", chrono=50, input_size=3, output_size=2, hidden_size=64))
    bias_ih, bias_hh = (net.layer.cell.bias_ih, net.layer.cell.bias_hh) if model == "sab" else (
        net.lstm.bias_ih_l0, net.lstm.bias_hh_l0)
    forget, inputs = bias_ih[64:128], bias_ih[:64]
    assert (forget >= 0).all() and (forget <= torch.log(torch.tensor(49.0)) + 1e-6).all() and forget.std() > 0.3
    torch.testing.assert_close(inputs, -forget)
    assert (bias_hh[:128] == 0).all()
    with pytest.raises(ValueError, match="chrono sets the forget biases itself"):
        SABConfig(preset="paper", chrono=50, forget_bias=1.0)
