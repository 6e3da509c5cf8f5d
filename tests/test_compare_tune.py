"""``sab-mips compare`` and ``sab-mips tune`` on tiny sizes: outputs, reuse of runs, and one-line refusals."""
import json
import statistics

import numpy as np
import pytest

from sab_mips.cli import main
from sab_mips.training.rundir import read_metrics
from sab_mips.offline_retrieval.tuning import pareto, recommend

TINY = ["--task", "copy", "--T", "6", "--hidden-size", "8", "--attn-dim", "8", "--k-top", "2", "--k-att", "1",
        "--batch-size", "2", "--steps", "2", "--eval-every", "2", "--eval-batches", "1", "--audit-every", "2",
        "--grad-cosine-every", "1", "--no-progress"]


def test_compare_writes_a_report_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["compare", *TINY, "--out", str(out), "--retrieval", "exact", "simple-lsh:bits=12,tables=1"]
    assert main(argv) == 0
    rows = json.loads((out / "compare.json").read_text())["runs"]
    assert list(rows) == ["exact", "simple-lsh:bits=12,tables=1"]
    # exact runs are not audited: nothing measured, so nothing reported (not a perfect 1)
    assert rows["exact"]["recall"] is None and rows["exact"]["grad_cosine"] is None
    assert rows["exact"]["audited"] is False
    lsh = rows["simple-lsh:bits=12,tables=1"]
    lines = [r for r in read_metrics(out / "runs" / "simple-lsh-bits=12-tables=1" / "metrics.jsonl")
             if r["split"] == "train"]
    # the row summarises the run's own audit lines; one 12-bit table misses most true top slots
    assert lsh["recall"] == pytest.approx(statistics.fmean(r["recall"] for r in lines)) and lsh["recall"] < 0.5
    # the copy task's 10 output steps, audited apart on every training pass
    assert lsh["scored_recall"] == pytest.approx(statistics.fmean(r["scored_recall"] for r in lines))
    assert all(r["scored_queries"] == 2 * 10 for r in lines) and rows["exact"]["scored_recall"] is None
    assert lsh["grad_cosine"] == pytest.approx(statistics.fmean(r["grad_cosine"] for r in lines))
    assert lsh["grad_cosine"] < 0.99 and lsh["steps"] == 2 and lsh["audited"] is True
    report = (out / "report.md").read_text()
    assert (out / "comparison.png").is_file() and "| `exact` |" in report
    exact_cells = next(line for line in report.splitlines() if line.startswith("| `exact` |")).split("|")[1:-1]
    # the columns recall, scored_recall, mass_recovered, grad_cosine: not measured, shown as missing
    assert [c.strip() for c in exact_cells[6:10]] == ["–"] * 4
    capsys.readouterr()
    assert main(argv) == 0  # finished runs are loaded, not retrained
    assert capsys.readouterr().out.count("resumed done:") == 2


def test_compare_over_seeds_pairs_each_run_with_the_first_setting_of_its_seed(tmp_path, capsys):
    out = tmp_path / "report"
    # faiss:Flat finds the exact candidates: its runs are bit-identical to exact ones, paired differences 0
    assert main(["compare", *TINY, "--out", str(out), "--seeds", "1", "2", "--retrieval", "exact", "faiss:Flat",
                 "simple-lsh:bits=12,tables=1"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert list(report["runs"]) == [f"{spec} (seed {s})" for s in (1, 2)
                                    for spec in ("exact", "faiss:Flat", "simple-lsh:bits=12,tables=1")]
    assert (out / "runs" / "faiss-Flat-seed2" / "checkpoint.pt").is_file()
    exact, flat = report["summary"]["exact"], report["summary"]["faiss:Flat"]
    assert exact["seeds"] == [1, 2] and exact["paired_diff_max_abs"] == 0 and flat["paired_diff_max_abs"] == 0
    accuracies = [report["runs"][f"exact (seed {s})"]["eval_accuracy"] for s in (1, 2)]
    assert exact["eval_accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    lsh = report["summary"]["simple-lsh:bits=12,tables=1"]
    scored = [report["runs"][f"simple-lsh:bits=12,tables=1 (seed {s})"]["scored_recall"] for s in (1, 2)]
    assert lsh["scored_recall_mean"] == pytest.approx(sum(scored) / 2) and exact["scored_recall_mean"] is None
    assert "paired diff mean" in (out / "report.md").read_text() and "scored recall" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--retrieval", "bogus"], "valid backends"),
    (["--retrieval", "exact", "--seeds", "-1"], "--seeds must be integers >= 0"),
    (["--retrieval", "exact", "--seeds", "1", "--seed", "2"], "either --seed or --seeds"),
    (["--retrieval", "exact", "--model", "lstm"], "has no effect on model 'lstm'"),
    (["--retrieval", "faiss:Flat", "--scorer", "official"], "needs the dot or cosine scorer"),
])
def test_compare_refusals(tmp_path, capsys, extra, message):
    assert main(["compare", *TINY, "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.fixture
def memories(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mem.npz"
    np.savez(path, keys=rng.standard_normal((400, 8)).astype(np.float32),
             queries=rng.standard_normal((40, 8)).astype(np.float32))
    return path


def _tune(memories, out, *extra):
    return main(["tune", "--memories", str(memories), "--out", str(out), "--n", "100", "--sequences", "2",
                 "--queries", "8", "--repeats", "1", "--k-top", "3", *extra])


def test_tune_sweeps_and_recommends(tmp_path, memories, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"k_cand": [4, 8]}))
    assert _tune(memories, tmp_path / "t", "--backend", "faiss:HNSW8,exact_below=0", "--grid", "efSearch=4,64",
                 "--grid", "M=4,8", "--grid-file", str(grid)) == 0
    result = json.loads((tmp_path / "t" / "tune.json").read_text())
    rows = result["rows"]
    assert (tmp_path / "t" / "tune.png").is_file()
    # one row per point of the grid: M (the descriptor's number) x efSearch x k_cand from the grid file
    assert sorted((r["retrieval"], r["k_cand"]) for r in rows) == sorted(
        (f"faiss:HNSW{m},exact_below=0,efSearch={ef}", k) for m in (4, 8) for ef in (4, 64) for k in (4, 8))
    # the recommendation is the fastest row that reaches the default target, found here by hand
    reaching = [r for r in rows if r["recall"] >= 0.95]
    best = result["recommended"]
    assert result["target_recall"] == 0.95 and reaching and best == min(reaching, key=lambda r: r["ms_per_query"])
    out = capsys.readouterr().out
    assert f"recommended (cheapest with recall >= 0.95): {best['retrieval']} with k_cand={best['k_cand']}" in out


def test_pareto_and_recommendation():
    rows = [dict(ms_per_query=t, recall=r) for t, r in [(1, 0.5), (2, 0.4), (3, 0.96), (4, 0.99), (5, 0.98)]]
    assert [(r["ms_per_query"]) for r in pareto(rows)] == [1, 3, 4]
    assert recommend(rows, 0.95)["ms_per_query"] == 3 and recommend(rows, 0.999) is None


@pytest.mark.parametrize("extra, message", [
    (["--backend", "faiss:HNSW8", "--grid", "nprobe=1,2"], "unknown grid parameter(s) nprobe"),
    (["--backend", "alsh", "--grid", "K=4,x"], "'x' is not a number"),
    (["--backend", "alsh", "--grid", "K="], "empty list"),
    (["--backend", "alsh"], "nothing to sweep"),
    (["--backend", "alsh", "--grid", "K=0"], "K=0 is invalid"),
    (["--backend", "alsh", "--grid", "k_cand=2"], "k_cand: values must be >= k_top+1"),
    (["--backend", "nope", "--grid", "K=1"], "valid backends"),
])
def test_tune_refusals(tmp_path, memories, capsys, extra, message):
    assert _tune(memories, tmp_path / "t", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_tune_refuses_a_bad_memories_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros(3))
    assert _tune(bad, tmp_path / "t", "--backend", "alsh", "--grid", "K=4") == 2
    assert "cannot read memories" in capsys.readouterr().err


def test_tune_live_runs(tmp_path, memories, capsys):
    config = tmp_path / "live.json"
    config.write_text(json.dumps({"model": {"hidden_size": 8, "attn_dim": 8, "k_top": 3, "k_att": 1},
                                  "train": {"task": "copy", "T": 6, "batch_size": 2, "eval_batches": 1}}))
    assert _tune(memories, tmp_path / "t", "--backend", "alsh", "--grid", "K=4,8", "--live-config", str(config),
                 "--live-steps", "2") == 0
    rows = json.loads((tmp_path / "t" / "tune.json").read_text())["rows"]
    assert [path.name for path in sorted((tmp_path / "t" / "live").iterdir())] == ["alsh-K=4-k_cand=4", "alsh-K=8-k_cand=4"]
    for row in rows:  # the live columns summarise the live run's audited training lines
        run_dir = tmp_path / "t" / "live" / f"{row['retrieval'].replace(':', '-')}-k_cand={row['k_cand']}"
        lines = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
        assert len(lines) == 2 and row["live_recall"] == pytest.approx(statistics.fmean(r["recall"] for r in lines))
        assert row["live_sec_per_update"] > 0
    assert _tune(memories, tmp_path / "t", "--backend", "alsh", "--grid", "K=4", "--live-steps", "2") == 2
    assert "need both --live-config" in capsys.readouterr().err
    # an exact index is not audited in training: its live recall stays missing, not a perfect 1
    assert _tune(memories, tmp_path / "exact", "--backend", "exact", "--grid", "k_cand=4", "--live-config",
                 str(config), "--live-steps", "1") == 0
    (exact,) = json.loads((tmp_path / "exact" / "tune.json").read_text())["rows"]
    assert exact["live_recall"] is None and "live: recall=– " in capsys.readouterr().out


def test_tune_live_config_is_read_like_a_train_config(tmp_path, memories, capsys):
    """The live runs' config goes through the same merge as ``train --config``: a size the task sets is refused."""
    config = tmp_path / "live.json"
    config.write_text(json.dumps({"model": {"hidden_size": 8, "input_size": 3}, "train": {"task": "copy", "T": 6}}))
    assert _tune(memories, tmp_path / "t", "--backend", "alsh", "--grid", "K=4", "--live-config", str(config),
                 "--live-steps", "1") == 2
    assert "input_size=3 does not match task 'copy'" in capsys.readouterr().err


def test_summary_leaves_what_a_run_did_not_measure_missing(tmp_path):
    """A run whose log says its audits were skipped (exact retrieval) gets None, not a perfect 1."""
    from sab_mips.training.summary import format_table, summarize_run

    def write(run, lines):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    train = [{"split": "train", "step": s, "wall_time": s, "sec_per_update": 0.5} for s in (1, 2, 3)]
    write("exact", [{"split": "note", "step": 0, "message": "retrieval audits skipped: exact"}, *train])
    write("approx", [{**r, "recall": 0.5 + 0.1 * i, "grad_cosine": 0.9} for i, r in enumerate(train)])
    exact, approx = summarize_run(tmp_path / "exact", "accuracy"), summarize_run(tmp_path / "approx", "accuracy")
    assert exact["audited"] is False and approx["audited"] is True
    assert [exact[k] for k in ("recall", "scored_recall", "mass_recovered", "grad_cosine")] == [None] * 4
    assert approx["recall"] == pytest.approx(0.6) and approx["grad_cosine"] == pytest.approx(0.9)
    assert approx["mass_recovered"] is None  # not logged by that run either
    exact_cells = format_table({"exact": exact}, "accuracy").splitlines()[2].split("|")[1:-1]
    assert [c.strip() for c in exact_cells[6:10]] == ["–"] * 4
