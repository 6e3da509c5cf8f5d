"""Retrieval audits: recall and mass recovered, gradient cosine, their logging in training, and --retrieval."""
import pytest
import torch

from indexes import make_index
from sab_mips import PassOptions, SABConfig, TrainConfig, build_model
from sab_mips.cli import main
from sab_mips.retrieval import RetrievalStats, mass_recovered, recall_at_k
from sab_mips.retrieval.metrics import score_scale
from sab_mips.training import train
from sab_mips.training.audit import exact_gradient_cosine
from sab_mips.training.rundir import read_metrics

COARSE = "simple-lsh:bits=12,tables=1"  # misses many true top slots on these sizes


def make(retrieval, **kwargs):
    torch.manual_seed(0)
    cfg = dict(input_size=3, output_size=2, hidden_size=8, attn_dim=6, k_top=2, k_att=1, k_trunc=4)
    return build_model(SABConfig(retrieval=retrieval, **{**cfg, **kwargs}), dtype=torch.float64)


def audited(model, x, every=1):
    return model.run(x, PassOptions(audit_every=every)).stats


def exact_index(keys):
    index = make_index("exact")
    index.reset(keys.shape[0], keys.shape[2])
    index.add(keys)
    return index


def test_audit_by_hand():
    """Two sequences, five slots, K=2: sequence 0's candidates hold exact slots 0 and 2, sequence 1's none."""
    keys = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 2).unsqueeze(2)  # (B=2, N=5, d=1): score = key value
    query = torch.ones(2, 1)
    ids = torch.tensor([[0, 3, 2], [4, 3, -1]])
    scores = torch.tensor([[5.0, 2.0, 3.0], [1.0, 2.0, 0.0]])
    weights = torch.tensor([[0.75, 0.0, 0.25], [0.0, 1.0, 0.0]])
    stats = RetrievalStats()
    stats.audit(query, exact_index(keys), ids, scores, weights, k=2)
    # exact top-3 scores 5, 4, 3 -> δ = 3, exact mass (5-3) + (4-3) = 3 on slots 0, 1
    # sequence 0: approx top-2 scores {5, 3}, one reaches the exact 2nd score 4: recall 1/2; its selection
    # {0, 2} keeps (5-3) + 0 = 2 of the mass: 2/3
    # sequence 1: approx top-2 scores {2, 1}: recall 0; selection {3} keeps 0
    metrics = stats.as_metrics()
    assert metrics["recall"] == pytest.approx(0.25)
    assert metrics["mass_recovered"] == pytest.approx(1 / 3)
    assert metrics["audited_queries"] == 2


def test_audit_counts_tied_slots_by_score():
    """Slots 1 and 2 tie: a selection holding slot 2 instead of slot 1 loses nothing."""
    keys = torch.tensor([[[5.0], [4.0], [4.0], [1.0]]])
    stats = RetrievalStats()
    stats.audit(torch.ones(1, 1), exact_index(keys), torch.tensor([[0, 2, 3]]), torch.tensor([[5.0, 4.0, 1.0]]),
                torch.tensor([[0.6, 0.4, 0.0]]), k=2)
    assert stats.as_metrics()["recall"] == 1.0 and stats.as_metrics()["mass_recovered"] == 1.0


def test_recall_rounding_tolerance_scales_with_the_best_score():
    """A K-th score near zero: a rounding difference far below the row's scale is a tie, a real gap is not."""
    exact = torch.tensor([[4.79, 1.68, -0.0097537]])
    rounded = torch.tensor([[4.79, 1.68, -0.0097539]])  # 2e-7 apart: rounding at a scale of 4.79
    missed = torch.tensor([[4.79, 1.68, -0.0100000]])
    assert recall_at_k(rounded, exact).tolist() == [1.0]
    assert recall_at_k(missed, exact).tolist() == [pytest.approx(2 / 3)]


def test_recall_rounding_scale_given_by_the_caller():
    """The demo's case: one slot, a cosine of 0.001 at temperature 5. The model's score and the exact search's
    differ by 1e-7, far below |q|·|k| = 5 but not below the score itself: a tie only at the |q|·|k| scale."""
    exact = torch.tensor([[0.0054304, float("-inf")]])
    found = torch.tensor([[0.0054303, float("-inf")]])
    assert recall_at_k(found, exact).tolist() == [0.0]  # measured against the score alone: a miss
    assert recall_at_k(found, exact, scale=torch.tensor([5.0])).tolist() == [1.0]
    below = torch.tensor([[0.0050000, float("-inf")]])  # 4e-4 below: a real gap at that scale too
    assert recall_at_k(below, exact, scale=torch.tensor([5.0])).tolist() == [0.0]


def test_score_scale_pairs_query_i_with_sequence_i_mod_s():
    """Two sequences whose largest keys have norms 2 and 10; four queries of norms 1, 1, 3, 3."""
    keys = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[0.0, 10.0], [0.0, 1.0]]])  # (S=2, N=2, d=2)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 3.0]])
    assert score_scale(queries, keys).tolist() == [2.0, 10.0, 6.0, 30.0]


def test_audit_measures_rounding_against_query_and_key_norms():
    """A near-orthogonal query: the only slot's score is tiny against |q|·|k|, and a rounding-sized
    difference between the model's score and the exact search's is not a miss."""
    keys = torch.tensor([[[1.0, 0.0]]])  # (B=1, N=1, d=2)
    query = torch.tensor([[0.0010860, 4.9999]])  # |q| ≈ 5, score 0.001086
    stats = RetrievalStats()
    stats.audit(query, exact_index(keys), torch.tensor([[0, -1]]), torch.tensor([[0.0010859, 0.0010859]]),
                torch.tensor([[1.0, 0.0]]), k=1)
    assert stats.as_metrics()["recall"] == 1.0
    stats = RetrievalStats()
    stats.audit(query, exact_index(keys), torch.tensor([[0, -1]]), torch.tensor([[0.0009, 0.0009]]),
                torch.tensor([[1.0, 0.0]]), k=1)
    assert stats.as_metrics()["recall"] == 0.0  # 2e-4 off at a scale of 5: a difference rounding cannot make


def test_recall_with_fewer_slots_than_k_counts_what_exists():
    """A sequence with N=2 < K=3 slots: finding both is recall 1, finding one is 1/2."""
    exact = torch.tensor([[3.0, 2.0, float("-inf")], [3.0, 2.0, float("-inf")]])
    found = torch.tensor([[3.0, 2.0, float("-inf")], [3.0, float("-inf"), float("-inf")]])
    assert recall_at_k(found, exact).tolist() == [1.0, 0.5]


def test_mass_recovered_by_hand():
    """Exact top-3 scores 4, 3, 1 with K=2: δ = 1, exact mass 3 + 2; keeping only the best slot keeps 3/5."""
    exact = torch.tensor([[4.0, 3.0, 1.0]])
    cand_scores = torch.tensor([[4.0, 0.5, 0.0]])
    selected = torch.tensor([[True, True, False]])
    assert mass_recovered(cand_scores, selected, exact, k=2).item() == pytest.approx(3 / 5)


def test_audits_skipped_for_exact_retrieval_and_replay():
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    stats = audited(make("exact"), x)
    assert stats.audits == "skipped: retrieval 'exact' is exact (recall 1 and gradient cosine 1 by construction)"
    assert stats.audited_queries == stats.scored_queries == 0 and "recall" not in stats.as_metrics()
    model = make(COARSE)
    record = model.run(x, PassOptions(record=True)).record
    stats = model.run(x, PassOptions(replay=record.candidate_ids, audit_every=1)).stats
    assert stats.audits == "skipped: candidates replayed from a record"
    assert stats.audited_queries == stats.scored_queries == 0 and "recall" not in stats.as_metrics()


def test_audit_of_an_index_that_happens_to_be_exact_gives_one():
    # HNSW answers by brute force below exact_below keys (but does not claim to be exact): audited, all 1
    metrics = audited(make("faiss:HNSW32"), torch.randn(2, 20, 3, dtype=torch.float64)).as_metrics()
    assert metrics["recall"] == 1.0 and metrics["mass_recovered"] == pytest.approx(1.0)
    assert metrics["audited_queries"] == 2 * 19 and metrics["retrieval_seconds"] > 0


def test_audit_of_a_coarse_index_and_audit_every():
    x = torch.randn(2, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    every = audited(make(COARSE), x, every=1).as_metrics()
    assert 0 <= every["recall"] < 1 and 0 <= every["mass_recovered"] < 1
    assert audited(make(COARSE), x, every=5).as_metrics()["audited_queries"] == 2 * 4  # steps 1, 6, 11, 16


def test_scored_audits_are_every_step_from_audit_from():
    """The scored sums hold exactly the attention steps at t >= audit_from: feeding the sequence in two chunks,
    the sampled sums (every step) after the second chunk minus those after the first give the scored sums."""
    model = make(COARSE)
    x = torch.randn(2, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    state = model.layer.initial_state(2, PassOptions(audit_every=1, audit_from=15), dtype=torch.float64)
    model.layer(x[:, :15], state)
    stats = state.recorder.stats
    before = (float(stats.recall_sum), float(stats.mass_sum), stats.audited_queries)
    assert stats.scored_queries == 0
    model.layer(x[:, 15:], state)
    stats = state.recorder.stats
    assert stats.scored_queries == stats.audited_queries - before[2] == 2 * 5  # steps 15..19, two sequences
    assert float(stats.scored_recall_sum) == pytest.approx(float(stats.recall_sum) - before[0], abs=1e-12)
    assert float(stats.scored_mass_sum) == pytest.approx(float(stats.mass_sum) - before[1], abs=1e-12)
    assert stats.as_metrics()["scored_recall"] < 1  # the coarse hash misses some there too


def test_scored_audits_alone_and_with_sampled_ones():
    x = torch.randn(2, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    alone = make(COARSE).run(x, PassOptions(audit_from=18)).stats.as_metrics()
    assert alone["scored_queries"] == 2 * 2 and "recall" not in alone  # no sampled audits asked for
    both = make(COARSE).run(x, PassOptions(audit_every=5, audit_from=0)).stats.as_metrics()
    assert both["audited_queries"] == 2 * 4 and both["scored_queries"] == 2 * 19  # attention at steps 1..19
    same = make(COARSE).run(x, PassOptions(audit_every=1, audit_from=0)).stats.as_metrics()
    assert same["scored_recall"] == same["recall"] and same["scored_mass_recovered"] == same["mass_recovered"]
    with pytest.raises(ValueError, match="audit_from must be >= 0"):
        make(COARSE).run(x, PassOptions(audit_from=-1))


def test_gradient_cosine_restores_the_gradient():
    model = make(COARSE)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    model(x).sum().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    cosine = exact_gradient_cosine(model, lambda: model.run(x, PassOptions(retrieval="exact")).logits.sum().backward())
    assert -1 <= cosine < 1 - 1e-9
    assert all(torch.equal(before[n], p.grad) for n, p in model.named_parameters())
    exact = make("faiss:HNSW32")  # exact in practice at this size
    exact(x).sum().backward()
    assert exact_gradient_cosine(exact, lambda: exact.run(x, PassOptions(retrieval="exact")).logits.sum().backward()) == pytest.approx(1.0)


def _train(tmp_path, retrieval, name):
    model_cfg = SABConfig(hidden_size=8, k_top=2, k_att=1, k_trunc=3, attn_dim=8, retrieval=retrieval)
    cfg = TrainConfig(task="copy", T=6, batch_size=2, steps=4, eval_every=4, eval_batches=1, seed=1,
                      audit_every=2, grad_cosine_every=2)
    train(model_cfg, cfg, tmp_path / name, progress=False)
    return read_metrics(tmp_path / name / "metrics.jsonl")


def test_training_logs_audits_and_plot_draws_them(tmp_path, capsys):
    lines = [r for r in _train(tmp_path, COARSE, "lsh") if r["split"] == "train"]
    # one 12-bit hash table misses true top slots, and the time in the index is a share of the update's
    assert all(r["recall"] < 1 and r["audited_queries"] > 0 for r in lines)
    assert all(r["retrieval_fraction"] == pytest.approx(r["retrieval_seconds"] / r["sec_per_update"]) for r in lines)
    assert [r["step"] for r in lines if "grad_cosine" in r] == [2, 4]
    assert main(["plot", "--run", str(tmp_path / "lsh")]) == 0
    assert (tmp_path / "lsh" / "retrieval.png").is_file()


def test_training_with_exact_retrieval_says_audits_are_skipped(tmp_path):
    records = _train(tmp_path, "exact", "exact")
    assert records[0]["split"] == "note" and "skipped" in records[0]["message"]
    assert not any("recall" in r or "grad_cosine" in r for r in records)


def test_eval_with_another_retrieval(tmp_path, capsys):
    _train(tmp_path, "faiss:HNSW32,efSearch=16", "hnsw")
    assert main(["eval", "--run", str(tmp_path / "hnsw"), "--retrieval", "faiss:HNSW32,efSearch=128"]) == 0
    assert main(["eval", "--run", str(tmp_path / "hnsw"), "--retrieval", "exact"]) == 0
    assert read_metrics(tmp_path / "hnsw" / "metrics.jsonl")[-1]["retrieval"] == "exact"
    assert main(["eval", "--run", str(tmp_path / "hnsw"), "--retrieval", "faiss:HNSW32,efSerch=1"]) == 2
    assert "valid parameters: efSearch" in capsys.readouterr().err


def test_eval_audits_recall_and_times_steps(tmp_path, capsys):
    """eval --audit-every: recall against exact search (1 for FAISS's exact index, below 1 for a coarse hash)
    and the time per step, in the printed line and the metrics line."""
    _train(tmp_path, "exact", "exact")
    run = str(tmp_path / "exact")
    assert main(["eval", "--run", run, "--T", "30", "--audit-every", "1", "--chunk", "7", "--retrieval", "faiss:Flat"]) == 0
    flat = read_metrics(tmp_path / "exact" / "metrics.jsonl")[-1]
    assert flat["recall"] == 1.0 and flat["mass_recovered"] == pytest.approx(1.0) and flat["ms_per_step"] > 0
    assert flat["scored_recall"] == 1.0  # the copy task's 10 output steps, audited apart
    assert main(["eval", "--run", run, "--T", "30", "--audit-every", "1", "--retrieval", COARSE]) == 0
    coarse = read_metrics(tmp_path / "exact" / "metrics.jsonl")[-1]
    assert coarse["recall"] < 1 and coarse["retrieval"] == COARSE and 0 <= coarse["scored_recall"] <= 1
    assert "recall=" in capsys.readouterr().out
    assert main(["eval", "--run", run, "--T", "30", "--audit-every", "1"]) == 0  # exact: says why no recall
    assert "audit skipped: retrieval 'exact' is exact" in capsys.readouterr().out
    assert main(["eval", "--run", run, "--audit-every", "-1"]) == 2
    assert "--audit-every must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--retrieval", "nope"], "valid backends"),
    (["--retrieval", "faiss:Flat", "--scorer", "additive"], "needs the dot or cosine scorer"),
    (["--k-cand", "2"], "k_cand must be >= k_top+1"),
    (["--model", "lstm", "--retrieval", "faiss:Flat"], "has no effect on model 'lstm'"),
])
def test_train_refuses_bad_retrieval_options(tmp_path, capsys, flags, message):
    assert main(["train", "--task", "copy", "--T", "5", "--run-dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("explore", [0, 2])
def test_audits_do_not_change_training(tmp_path, explore):
    """Audited and unaudited runs of an approximate index follow the same trajectory, bit for bit: the
    measurements (extra exact searches, the extra gradient pass) never feed back into the updates, not even
    through the random draws of exploration."""
    model_cfg = SABConfig(model="sab", hidden_size=8, k_top=2, k_att=1, k_trunc=3, attn_dim=6, retrieval=COARSE,
                          sparsifier="softmax", explore=explore)
    # one kernel for both: audited passes run on the Python path, and the compiled one rounds differently
    base = dict(task="copy", T=8, batch_size=3, steps=6, eval_every=3, eval_batches=1, seed=1, kernel="python")
    train(model_cfg, TrainConfig(**base, audit_every=1, grad_cosine_every=2), tmp_path / "audited", progress=False)
    train(model_cfg, TrainConfig(**base, audit_every=0, grad_cosine_every=0), tmp_path / "plain", progress=False)
    audited_lines, plain_lines = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("audited", "plain"))
    assert any("grad_cosine" in r for r in audited_lines) and any("recall" in r for r in audited_lines)
    assert [r["loss"] for r in audited_lines if "loss" in r] == [r["loss"] for r in plain_lines if "loss" in r]
