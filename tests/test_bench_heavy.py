"""``sab-mips bench heavy`` end to end on a tiny trained run (its timings are not checked here)."""
import json

from sab_mips import SABConfig, TrainConfig
from sab_mips.cli import main
from sab_mips.training import train

COARSE = "simple-lsh:bits=12,tables=1"


def test_heavy_benchmark_writes_one_row_per_setting_and_length(tmp_path, capsys):
    model_cfg = SABConfig(model="sab", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8)
    train(model_cfg, TrainConfig(task="copy", T=3, batch_size=2, steps=1, eval_batches=1, seed=0),
          tmp_path / "run", progress=False)
    out = tmp_path / "heavy.json"
    argv = ["--run", str(tmp_path / "run"), "--T", "20", "40", "--k-att", "1", "--rounds", "2", "--audit-every", "1",
            "--retrieval", COARSE, "--out", str(out)]
    assert main(["bench", "heavy", *argv]) == 0
    record = json.loads(out.read_text())
    assert record["command"] == "sab-mips bench heavy " + " ".join(argv)
    rows = record["rows"]
    assert [(r["T"], r["retrieval"]) for r in rows] == [(20, "exact"), (20, COARSE), (40, "exact"), (40, COARSE)]
    assert [r["slots"] for r in rows] == [40, 40, 60, 60]  # copy: T + 20 steps, a slot every step (--k-att 1)
    assert all(len(r["sec_per_update_all_rounds"]) == 2 for r in rows)
    coarse = [r for r in rows if r["retrieval"] == COARSE]
    # one table per sequence and 12 bits: most buckets are nearly empty, so exact top slots are missed
    assert all(r["recall"] < 1 and r["index_seconds"] > 0 for r in coarse)
    # exact retrieval is not audited: its recall was not measured and stays missing, not a perfect 1
    exact = [r for r in rows if r["retrieval"] == "exact"]
    assert all(r["recall"] is None and r["mass_recovered"] is None for r in exact)
    printed = capsys.readouterr().out
    exact_lines = [line.split() for line in printed.splitlines() if line.split()[2:3] == ["exact"]]
    assert len(exact_lines) == 2 and all(line[-2:] == ["–", "–"] for line in exact_lines)
    assert "x exact" in printed


def test_heavy_benchmark_refuses_a_run_without_checkpoint(tmp_path, capsys):
    assert main(["bench", "heavy", "--run", str(tmp_path), "--retrieval", COARSE]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_heavy_benchmark_refuses_an_index_the_runs_scorer_cannot_use(tmp_path, capsys):
    model_cfg = SABConfig(model="sab", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8, scorer="additive")
    train(model_cfg, TrainConfig(task="copy", T=3, batch_size=2, steps=1, eval_batches=1, seed=0),
          tmp_path / "run", progress=False)
    assert main(["bench", "heavy", "--run", str(tmp_path / "run"), "--retrieval", COARSE]) == 2
    assert "needs the dot or cosine scorer" in capsys.readouterr().err
