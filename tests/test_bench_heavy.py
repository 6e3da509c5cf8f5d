"""``sab-mips bench heavy`` runs end to end on a tiny trained run (its timings are not checked here)."""
import json

from benchmarks import heavy
from sab_mips.config import SABConfig, TrainConfig
from sab_mips.train import train


def test_heavy_benchmark_writes_one_row_per_setting_and_length(tmp_path, capsys):
    model_cfg = SABConfig(model="sab", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8)
    train(model_cfg, TrainConfig(task="copy", T=3, batch_size=2, steps=1, eval_batches=1, seed=0),
          tmp_path / "run", progress=False)
    out = tmp_path / "heavy.json"
    assert heavy.main(["--run", str(tmp_path / "run"), "--T", "20", "40", "--k-att", "1", "--rounds", "1",
                       "--audit-every", "1", "--retrieval", "simple-lsh:bits=8,tables=1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["T"], r["retrieval"]) for r in rows] == [
        (20, "exact"), (20, "simple-lsh:bits=8,tables=1"), (40, "exact"), (40, "simple-lsh:bits=8,tables=1")]
    assert rows[2]["slots"] == 60  # copy: T + 20 steps, a slot every step
    assert all(r["ratio_to_exact"] == 1.0 and r["recall"] == 1.0 for r in rows if r["retrieval"] == "exact")
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)
    assert "x exact" in capsys.readouterr().out
