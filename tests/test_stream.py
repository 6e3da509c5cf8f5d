"""Streaming language modelling (``training.stream``) on a small generated text: exact resume with the memory
and its index, the gradient cut at window boundaries, the memory cap and scope, re-keying against stale
keys, and bits per character against a one-pass computation."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from sab_mips import PassOptions, SABConfig, TrainConfig, build_model
from sab_mips.cli import main
from sab_mips.corpora import load_corpus
from sab_mips.training import train
from sab_mips.training.rundir import load_checkpoint, read_metrics
from sab_mips.model.record import AttentionRecord
from sab_mips.training.stream import AttentionDistances, StreamRunner, evaluate_stream, one_hot

TIMING = ("wall_time", "sec_per_update", "ms_per_step", "retrieval_seconds", "refresh_seconds", "rss_gib")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "the", "and", "of", "lord", "said", "unto"]
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(4000)))
    return path


def configs(text_file, retrieval="exact", **train):
    model = SABConfig(model="sab", hidden_size=16, k_top=2, k_att=3, k_trunc=5, attn_dim=8, retrieval=retrieval)
    values = dict(task="text", data=str(text_file), window=20, batch_size=3, steps=12, eval_every=6,
                  checkpoint_every=4, eval_chars=600, audit_every=15, lr=3e-3)
    values.update(train)
    return model, TrainConfig(**values)


def lines(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("retrieval,train_options", [
    ("exact", {}),
    ("faiss:IVF4,nprobe=1,min_train=2", {"memory_slots": 30, "refresh_every": 3}),
    ("faiss:HNSW32,efSearch=4,exact_below=0", {"refresh_below": 0.99}),
])
def test_resume_continues_the_stream_exactly_memory_and_index_included(tmp_path, text_file, retrieval, train_options):
    """A run killed after 8 updates and resumed ends exactly as the run that was never stopped: every metric
    line (bits per character, memory size, audited recall) and every weight."""
    model_cfg, train_cfg = configs(text_file, retrieval, **train_options)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(model_cfg, train_cfg, whole, progress=False)
    train(model_cfg, train_cfg.replace(steps=8), parts, progress=False)
    train(model_cfg, train_cfg, parts, resume=True, progress=False)
    # the interrupted run also evaluated where it stopped (step 8): an extra line, not a difference
    assert [r for r in lines(parts) if not (r["split"] == "eval" and r["step"] == 8)] == lines(whole)
    assert any(r.get("memory_slots", 0) > 0 for r in lines(whole))
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(parts / "checkpoint.pt")
    for name, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][name]), name
    assert torch.equal(a["stream_state"]["values"], b["stream_state"]["values"])


def test_memory_cap_and_window_scope(tmp_path, text_file):
    model_cfg, train_cfg = configs(text_file, memory_slots=10, steps=6, audit_every=0)
    train(model_cfg, train_cfg, tmp_path / "cap", progress=False)
    sizes = [r["memory_slots"] for r in lines(tmp_path / "cap") if r["split"] == "train"]
    # 6 or 7 slots per window (k_att=3, W=20); above 10 the memory is cut to the 5 newest
    expected, size = [], 0
    for w in range(6):
        size += sum((t + 1) % 3 == 0 for t in range(20 * w, 20 * w + 20))
        size = 5 if size > 10 else size
        expected.append(size)
    assert sizes == expected == [6, 5, 5, 5, 5, 5]
    model_cfg, train_cfg = configs(text_file, memory="window", steps=4, audit_every=0)
    train(model_cfg, train_cfg, tmp_path / "window", progress=False)
    sizes = [r["memory_slots"] for r in lines(tmp_path / "window") if r["split"] == "train"]
    # the slots of one window only: steps t with (t + 1) % 3 == 0 inside [20w, 20w + 20)
    assert sizes == [sum((t + 1) % 3 == 0 for t in range(20 * w, 20 * w + 20)) for w in range(4)]


def test_a_window_only_memory_keeps_the_streams_audit_schedule(tmp_path, text_file):
    """Audits every 30 attention steps: about every 1.5 windows of 20 steps, not in every window because each
    window starts a fresh memory."""
    model_cfg, train_cfg = configs(text_file, retrieval="simple-lsh:bits=4,tables=1", memory="window", steps=6,
                                   audit_every=30)
    train(model_cfg, train_cfg, tmp_path / "w", progress=False)
    audited = [r["step"] for r in lines(tmp_path / "w") if r["split"] == "train" and "recall" in r]
    assert 2 <= len(audited) <= 4 and audited[0] == 1


def test_the_memory_cap_keeps_the_newest_slots(text_file):
    model_cfg, train_cfg = configs(text_file, memory_slots=10)
    corpus = load_corpus(str(text_file))
    model = build_model(model_cfg.replace(input_size=len(corpus.vocabulary), output_size=len(corpus.vocabulary)))
    runner = StreamRunner(model, train_cfg, batch=2)
    x = one_hot(torch.randint(len(corpus.vocabulary), (2, 20)), len(corpus.vocabulary))
    for _ in range(2):
        runner.step(x)
        runner.end_window()
    memory = runner.state.memory
    assert memory.size == 5 and memory.times == [26, 29, 32, 35, 38]  # written after steps 2, 5, ..., 38


def test_the_gradient_stops_at_the_window_boundary(text_file):
    """Window 2's loss reaches window 1's inputs without ``detach`` (through (h, c) and the slots it reads),
    and not at all with it, while the scorer still gets gradient from the slots of window 1."""
    torch.manual_seed(0)
    model = build_model(SABConfig(model="sab", input_size=4, output_size=4, hidden_size=8, k_top=2, k_att=2,
                                  k_trunc=50, attn_dim=8))
    x1 = torch.randn(2, 10, 4, requires_grad=True)
    x2 = torch.randn(2, 10, 4)
    _, state = model.stream(x1)
    kept, _ = model.stream(x2, state)
    kept.sum().backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0
    x1.grad = None
    model.zero_grad()
    _, state = model.stream(x1)
    cut, _ = model.stream(x2, state.detach())
    cut.sum().backward()
    assert x1.grad is None
    scorer_grad = sum(p.grad.abs().sum() for p in model.layer.scorer.parameters() if p.grad is not None)
    assert scorer_grad > 0


def test_rekeying_restores_recall_against_todays_keys():
    """An exact index whose keys were made before the weights changed misses today's top slots; the audit
    (whose reference holds today's keys) sees it, and re-keying brings recall back to 1."""
    torch.manual_seed(0)
    model = build_model(SABConfig(model="sab", input_size=4, output_size=4, hidden_size=16, k_top=2, k_att=1,
                                  k_trunc=5, attn_dim=8, scorer="dot", retrieval="exact"))
    layer = model.layer
    assert layer.initial_state(2, PassOptions(audit_every=1)).recorder.exact_index is None  # exact: no audit
    state = layer.initial_state(2, PassOptions(audit_every=1, stale_keys=True), steps=200)
    with torch.no_grad():
        layer(torch.randn(2, 100, 4), state)
        layer.scorer.key_proj.weight.copy_(torch.randn_like(layer.scorer.key_proj.weight))  # the weights move on
    key_of = layer.scorer.projection().key

    def audited_recall() -> float:
        state.recorder.stats = type(state.recorder.stats)()
        state.recorder.rekey(key_of(state.memory.values()))  # the reference: today's keys
        with torch.no_grad():
            layer(torch.randn(2, 5, 4), state)
        return state.recorder.stats.as_metrics()["recall"]

    assert audited_recall() < 0.9
    seconds = state.rekey(key_of)
    assert seconds > 0 and audited_recall() == 1.0


def test_bits_per_character_of_a_stream_equal_one_pass_over_it(text_file):
    """Streaming a split in windows with (h, c) carried gives the loss of one pass over each whole stream."""
    corpus = load_corpus(str(text_file))
    V = len(corpus.vocabulary)
    model_cfg, train_cfg = configs(text_file)
    torch.manual_seed(0)
    lstm = build_model(SABConfig(model="lstm", input_size=V, output_size=V, hidden_size=16)).to(torch.float64)
    ids = corpus.splits["valid"]
    out = evaluate_stream(lstm, train_cfg, ids, batch=2)
    length = ids.numel() // 2
    rows = ids[: 2 * length].view(2, length)
    usable = (length - 1) // 20 * 20  # whole windows only
    x, y = one_hot(rows[:, :usable], V, torch.float64), rows[:, 1 : usable + 1]
    with torch.no_grad():
        expected = F.cross_entropy(lstm(x).reshape(-1, V), y.reshape(-1)).item()
    assert out["chars"] == 2 * usable
    assert out["bpc"] == pytest.approx(expected / math.log(2), rel=1e-12)


def test_continuing_a_state_of_other_streams_is_refused(tmp_path, text_file):
    model_cfg, train_cfg = configs(text_file, steps=2, audit_every=0)
    train(model_cfg, train_cfg, tmp_path / "r", progress=False)
    saved = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    corpus = load_corpus(str(text_file))
    model = build_model(model_cfg.replace(input_size=len(corpus.vocabulary), output_size=len(corpus.vocabulary)))
    with pytest.raises(ValueError, match="holds 3 streams; batch is 2"):
        evaluate_stream(model, train_cfg, corpus.splits["test"], batch=2, start=saved["stream_state"])


def test_text_options_are_refused_where_they_do_nothing(tmp_path, text_file, capsys):
    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    run = ["--run-dir", str(tmp_path / "r"), "--no-progress"]
    assert "--window has no effect on task 'copy'" in error(["train", "--task", "copy", "--window", "50", *run])
    assert "--T has no effect on task 'text'" in error(["train", "--task", "text", "--data", str(text_file),
                                                          "--T", "50", *run])
    assert "--memory-slots has no effect on model 'lstm'" in error(
        ["train", "--task", "text", "--data", str(text_file), "--model", "lstm", "--memory-slots", "5", *run])
    assert "task text needs data" in error(["train", "--task", "text", *run])


def test_cli_trains_evaluates_and_samples_a_text_run(tmp_path, text_file, capsys):
    def error_line(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["train", "--task", "text", "--data", str(text_file), "--window", "20", "--batch-size", "2",
                 "--model", "sab", "--hidden-size", "8", "--k-top", "2", "--k-att", "3", "--k-trunc", "5",
                 "--attn-dim", "8", "--steps", "3", "--eval-chars", "200", "--run-dir", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--split", "test", "--memory-slots", "0", "--retrieval", "exact",
                 "faiss:Flat"]) == 0
    printed = capsys.readouterr().out
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r.get("source") == "sab-mips eval"]
    assert [(r["data"], r["retrieval"]) for r in evals] == [("test", "exact"), ("test", "faiss:Flat")]
    assert evals[0]["bpc"] == evals[1]["bpc"]  # two exact searches: the same candidates
    assert sum(evals[0]["attention_distance_hist"]) == pytest.approx(1.0) and 0 <= evals[0]["old_attention"] <= 1
    assert f"bpc={evals[0]['bpc']:.4f}" in printed and "test of" in printed
    assert main(["eval", "--run", str(run), "--split", "test", "--memory-from", "training"]) == 0
    continued = [r for r in read_metrics(run / "metrics.jsonl") if r.get("memory_from") == "training"][-1]
    slots_after_training = load_checkpoint(run / "checkpoint.pt")["stream_state"]["values"].shape[1]
    fresh = [r for r in evals if r["retrieval"] == "exact"][0]
    assert continued["memory_slots"] == slots_after_training + fresh["memory_slots"]  # the training memory, then the test
    assert continued["bpc"] != fresh["bpc"]
    assert "--memory-from training continues" in error_line(["eval", "--run", str(run), "--memory-from", "training",
                                                             "--batch-size", "3"])
    assert main(["eval", "--run", str(run), "--split", "test", "--chars", "80", "--attention-every", "0"]) == 0
    short = read_metrics(run / "metrics.jsonl")[-1]
    # the first 40 characters of each of the 2 streams, in whole windows of 20 (the targets run one past)
    assert short["chars"] == 2 * 20 < fresh["chars"]
    assert "--chars" in error_line(["eval", "--run", str(run), "--chars", "-1"])
    assert main(["plot", "--run", str(run)]) == 0
    assert (run / "stream.png").stat().st_size > 0 and (run / "attention_distances.png").stat().st_size > 0
    capsys.readouterr()
    samples = []
    for _ in range(2):
        assert main(["generate", "--run", str(run), "--prompt", "the lord said", "--chars", "40", "--seed", "3"]) == 0
        samples.append(capsys.readouterr().out.rstrip("\n"))
    vocabulary = set(load_corpus(str(text_file)).vocabulary.chars)
    assert samples[0] == samples[1] and len(samples[0]) == 40 and set(samples[0]) <= vocabulary

    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "--t does not apply to a text run" in error(["eval", "--run", str(run), "--T", "5"]).lower()
    assert "the prompt is empty" in error(["generate", "--run", str(run), "--prompt", ""])
    copy_run = tmp_path / "copy"
    assert main(["train", "--task", "copy", "--T", "3", "--model", "lstm", "--hidden-size", "4", "--steps", "1",
                 "--batch-size", "2", "--eval-batches", "1", "--run-dir", str(copy_run), "--no-progress"]) == 0
    assert "not of task 'text'" in error(["generate", "--run", str(copy_run), "--prompt", "a"])
    assert "--split applies to runs of the text and image tasks only" in error(["eval", "--run", str(copy_run), "--split", "test"])
    assert "--chars applies to runs of task 'text' only" in error(["eval", "--run", str(copy_run), "--chars", "9"])


def test_attention_distances_bin_the_weight_by_how_far_back_each_slot_was_written():
    """Slots written at steps 3, 40 and 95; step 100 gives them weights 0.5, 0.3 and 0.2 (distances 97, 60, 5),
    step 101 gives 1.0 to the slot of step 95 (distance 6); the window starts at step 50."""
    record = AttentionRecord(steps=torch.tensor([100, 101]), candidate_ids=torch.zeros(2, 1, 3, dtype=torch.long),
                             slot_ids=torch.tensor([[[0, 1, 2]], [[2, -1, -1]]]),
                             weights=torch.tensor([[[0.5, 0.3, 0.2]], [[1.0, 0.0, 0.0]]]),
                             slot_times=torch.tensor([3, 40, 95]))
    distances = AttentionDistances()
    distances.add(record, window_start=50)
    metrics = distances.as_metrics()
    expected = [0.0] * 21
    expected[6] = 0.5 / 2  # 97 and 60 in [64, 128) and [32, 64)
    expected[5] = 0.3 / 2
    expected[2] = 1.2 / 2  # 5 and 6 in [4, 8)
    assert metrics["attention_distance_hist"] == pytest.approx(expected)
    assert metrics["old_attention"] == pytest.approx(0.8 / 2)
    assert metrics["attention_distance_median"] == 4
