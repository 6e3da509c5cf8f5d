"""The sab-mips command line, called in-process: a full smoke run and one clean error line per mistake."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sab_mips.tasks import IMAGE_TASKS, TASKS

from image_files import fashion_dir  # noqa: F401  (a fixture)
from sab_mips.training.rundir import read_metrics
from sab_mips.cli import build_parser, main
from sab_mips.cli.flags import configs_from_args

TINY_SAB = ["--model", "sab", "--hidden-size", "8", "--k-top", "2", "--k-att", "2", "--k-trunc", "3", "--attn-dim", "8"]
TINY_RUN = ["--task", "copy", "--T", "3", "--batch-size", "2", "--eval-batches", "1", "--no-progress"]


def _error(capsys, argv: list[str]) -> str:
    """Run main(argv), assert it failed with status 2 and one stderr line, return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sab-mips: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_train_resume_eval_plot(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_SAB, *TINY_RUN, "--steps", "2", "--eval-every", "2", "--run-dir", str(run)]) == 0
    assert "done: copy T=3 model=sab steps=2" in capsys.readouterr().out
    # On resume the saved config is the base: the model flags may be left out; steps may grow.
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert "steps=4" in capsys.readouterr().out
    assert main(["eval", "--run", str(run), "--T", "6", "--batches", "1"]) == 0
    assert "T=6 (trained at T=3)" in capsys.readouterr().out
    transfer = [r for r in read_metrics(run / "metrics.jsonl") if r.get("source") == "sab-mips eval"]
    assert len(transfer) == 1 and transfer[0]["T"] == 6 and transfer[0]["step"] == 4
    out = tmp_path / "plots"
    assert main(["plot", "--run", str(run), "--out", str(out)]) == 0
    for name in ("learning_curves.png", "attention.png", "diagnostics.png", "transfer.png"):  # transfer: the eval
        assert (out / name).stat().st_size > 0


def test_eval_through_several_indexes_prints_a_table_of_what_each_measured(tmp_path, capsys):
    """Each index gets its own eval line (and metrics line); the table shows their values, "–" where nothing
    was measured (exact search is not audited), and a bad factory string fails before any evaluation."""
    run = tmp_path / "run"
    assert main(["train", *TINY_SAB, *TINY_RUN, "--steps", "1", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    argv = ["eval", "--run", str(run), "--T", "20", "--batches", "1", "--audit-every", "1", "--retrieval", "exact",
            "simple-lsh:bits=4,tables=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r.get("source") == "sab-mips eval"]
    assert [r["retrieval"] for r in evals] == ["exact", "simple-lsh:bits=4,tables=1"]
    table = printed[printed.index("T=20, 2 sequences:"):].splitlines()
    exact_row, lsh_row = table[2].split(), table[3].split()
    assert exact_row == ["exact", f"{evals[0]['accuracy']:.4f}", f"{evals[0]['ms_per_step']:.3f}", "–", "–"]
    assert lsh_row[0] == "simple-lsh:bits=4,tables=1" and lsh_row[3] == f"{evals[1]['recall']:.4f}"
    assert "unknown" in _error(capsys, ["eval", "--run", str(run), "--retrieval", "exact", "nope:x=1"])
    assert len([r for r in read_metrics(run / "metrics.jsonl") if r.get("source") == "sab-mips eval"]) == 2


def test_plot_draws_the_attention_map_of_a_long_run_at_a_bounded_length(tmp_path, capsys, monkeypatch):
    """A (T, T) map of a run trained at T=10^5 would not fit in memory: it is drawn at MAX_MAP_T."""
    from sab_mips.cli import plot as plot_command

    run = tmp_path / "run"
    assert main(["train", *TINY_SAB, *TINY_RUN, "--T", "9", "--steps", "1", "--run-dir", str(run)]) == 0
    drawn = []
    monkeypatch.setattr(plot_command, "MAX_MAP_T", 4)
    monkeypatch.setattr(plot_command, "plot_attention_map", lambda attention, path, title: drawn.append(attention.shape))
    assert main(["plot", "--run", str(run)]) == 0
    assert "drawn at T=4" in capsys.readouterr().out
    assert drawn == [(4 + 20, 4 + 20)]  # copy at T=4: 10 digits, 3 blanks and a marker, 10 outputs


def test_plot_skips_the_attention_map_of_models_without_attention(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lstm", "--hidden-size", "8", *TINY_RUN, "--steps", "1", "--run-dir", str(run)]) == 0
    assert main(["plot", "--run", str(run)]) == 0
    assert "no attention" in capsys.readouterr().out
    assert (run / "learning_curves.png").stat().st_size > 0 and not (run / "attention.png").exists()
    assert main(["eval", "--run", str(run), "--batches", "1"]) == 0  # an evaluation at the run's own length
    assert main(["plot", "--run", str(run)]) == 0
    assert not (run / "transfer.png").exists()  # never evaluated at another length
    assert "--chunk applies to models with a memory" in _error(capsys, ["eval", "--run", str(run), "--chunk", "5"])
    assert "--audit-every applies to model 'sab' only" in _error(capsys, ["eval", "--run", str(run), "--audit-every", "1"])


def test_config_file_with_flag_overrides(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"model": "tbptt", "hidden_size": 8, "k_trunc": 2},
                                  "train": {"task": "adding", "T": 4, "batch_size": 2, "steps": 5}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--steps", "1", "--eval-batches", "1", "--no-progress",
                 "--run-dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 1 and saved["train"]["task"] == "adding" and saved["model"]["k_trunc"] == 2
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"model": "lstm", "k_top": 3}))  # a flat config with an option lstm ignores
    assert "has no effect on model 'lstm'" in _error(capsys, ["train", "--config", str(flat), "--run-dir", str(run)])


@pytest.fixture
def finished_run(tmp_path, capsys):
    run = tmp_path / "done"
    assert main(["train", *TINY_SAB, *TINY_RUN, "--steps", "1", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    return run


def test_refusals_of_a_run_directory(tmp_path, capsys, finished_run):
    run = str(finished_run)
    assert "k_top=2 (saved) vs 3 (requested)" in _error(capsys, ["train", "--run-dir", run, "--resume", "--k-top", "3"])
    assert "already holds a run" in _error(capsys, ["train", *TINY_SAB, "--run-dir", run])
    assert "no checkpoint" in _error(capsys, ["train", "--run-dir", str(tmp_path / "new"), "--resume"])
    for command in ("eval", "plot"):
        assert "does not exist" in _error(capsys, [command, "--run", str(tmp_path / "missing")])
    assert "too small" in _error(capsys, ["eval", "--run", run, "--T", "0"])
    assert "--chunk must be >= 1" in _error(capsys, ["eval", "--run", run, "--chunk", "0"])
    checkpoint = finished_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated
    assert "corrupt" in _error(capsys, ["eval", "--run", run])
    checkpoint.write_bytes(b"garbage")
    assert "corrupt" in _error(capsys, ["train", "--run-dir", run, "--resume"])
    assert "corrupt" in _error(capsys, ["plot", "--run", run])


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "unknown task 'nope'; valid choices: copy, adding"),
    (["--model", "nope"], "unknown model 'nope'; valid choices: sab, dense, tbptt, lstm"),
    (["--scorer", "nope"], "unknown scorer 'nope'; valid choices: dot, cosine, additive, official"),
    (["--k-top", "0"], "k_top must be an integer >= 1"),
    (["--k-trunc", "0"], "k_trunc must be an integer >= 1"),
    (["--k-top", "two"], "invalid int value"),
    (["--task", "adding", "--T", "1"], "T=1 is too small for task 'adding' (needs T >= 2)"),
    (["--task", "copy", "--eval-T", "0"], "eval_T must be an integer >= 1"),
    (["--model", "lstm", "--k-top", "3"], "--k-top has no effect on model 'lstm'"),
    (["--model", "tbptt", "--scorer", "dot"], "--scorer has no effect on model 'tbptt'"),
    (["--config", "/nonexistent/c.json"], "cannot read --config file"),
    (["--model", "lstm", "--record-memories", "m.npz", "--T", "2", "--steps", "1"], "record-memories"),
    (["--record-count", "0", "--record-memories", "m.npz"], "--record-count must be >= 1"),
    (["--record-count", "10"], "--record-count applies to --record-memories only"),
    (["--model", "lstm", "--engine", "on"], "--engine has no effect on model 'lstm'"),
    (["--model", "dense", "--grad-cosine-every", "5"], "--grad-cosine-every has no effect on model 'dense'"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_train_errors(tmp_path, capsys, argv, message):
    assert message in _error(capsys, ["train", "--no-progress", "--run-dir", str(tmp_path / "r"), *argv])


@pytest.mark.parametrize("command", ["train", "eval", "compare"])
def test_threads_sets_torchs_thread_count(command, tmp_path, monkeypatch):
    """--threads reaches torch before any work, in every subcommand that computes (the run itself fails here,
    after the setting: a missing run, or compare without --retrieval values that exist)."""
    calls = []
    monkeypatch.setattr("torch.set_num_threads", calls.append)
    argv = {"train": ["train", "--run-dir", str(tmp_path / "missing"), "--resume"],
            "eval": ["eval", "--run", str(tmp_path / "missing")],
            "compare": ["compare", "--out", str(tmp_path / "c"), "--retrieval", "nope:x", "--model", "sab"]}[command]
    assert main([*argv, "--threads", "3"]) == 2
    assert calls == [3]


def test_unreadable_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "cannot read --config file" in _error(capsys, ["train", "--config", str(bad), "--run-dir", str(tmp_path)])
    bad.write_text(json.dumps({"model": {"k_topp": 3}}))
    assert "unknown config field(s) k_topp" in _error(capsys, ["train", "--config", str(bad), "--run-dir", str(tmp_path)])


def test_unknown_command_and_missing_arguments(capsys):
    assert "invalid choice" in _error(capsys, ["frobnicate"])
    assert "required" in _error(capsys, ["train"])


def test_help_everywhere(capsys):
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"], ["plot", "--help"], ["info", "--help"],
                 ["bench", "--help"]):
        assert main(argv) == 0
    assert "--k-top" in capsys.readouterr().out


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch, capsys):
    """Only UserError becomes one line; any other exception (here a ValueError raised by a broken piece
    of the engine) keeps its traceback."""
    import sab_mips.cli.train as train_command

    def broken(*args, **kwargs):
        raise ValueError("shape mismatch deep inside")

    monkeypatch.setattr(train_command, "train", broken)
    with pytest.raises(ValueError, match="deep inside"):
        main(["train", "--task", "copy", "--T", "3", "--run-dir", "unused", "--no-progress"])


def test_help_shows_the_help_of_every_config_field(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "K, slots that receive non-zero attention weight at each attention step. Used by: sab. (default: 5)" in out
    assert "--k-cand K_CAND" in out and "--init-from INIT_FROM" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "numpy", "faiss", "device", "threads", "exact", "copy"):
        assert word in out


def test_bench_dispatches_the_remaining_arguments(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("sab_mips.bench.step")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "sab_mips.bench.step", fake)
    assert main(["bench", "step", "--T", "100", "--help"]) == 0
    assert seen["argv"] == ["--T", "100", "--help"]


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("experiments", "configs").glob("*.json")),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(path, tmp_path, fashion_dir):
    # the image configs read Fashion-MNIST: here the generated stand-in of 4x5 images (fashion_dir)
    args = build_parser().parse_args(["train", "--config", str(path), "--run-dir", str(tmp_path)])
    model_cfg, train_cfg = configs_from_args(args)
    if train_cfg.task == "text":  # the model is sized from the corpus's vocabulary when the run starts
        assert train_cfg.data in ("kjv", "gcide")
    elif train_cfg.task in IMAGE_TASKS:
        assert (train_cfg.T, model_cfg.input_size, model_cfg.output_size) == (20, 1, 3)
    else:
        assert model_cfg.input_size == TASKS[train_cfg.task].input_size
