"""``sab-mips bench long`` end to end at tiny lengths (its timings are not checked here)."""
import json

from sab_mips import SABConfig, TrainConfig
from sab_mips.bench.long import projected
from sab_mips.cli import main
from sab_mips.training import train


def test_long_benchmark_measures_each_row_in_a_child_and_skips_what_it_projects_too_big(tmp_path, capsys):
    out = tmp_path / "long.json"
    assert main(["bench", "long", "--T", "40", "4000", "--models", "sab-engine", "sab-mips", "--batch-size", "2",
                 "--hidden-size", "8", "--approx", "simple-lsh:bits=8,tables=1", "--audit-every", "1",
                 "--max-gib", "1000", "--max-minutes", "0.0001", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["T"]) for r in rows] == [("sab-engine", 40), ("sab-mips", 40), ("sab-engine", 4000),
                                                     ("sab-mips", 4000)]
    assert all(r["peak_gib"] >= r["base_gib"] > 0 and r["ms_per_step"] > 0 for r in rows[:2])
    assert 0 <= rows[1]["recall"] <= 1 and 0 <= rows[1]["mass_recovered"] <= 1 and "recall" not in rows[0]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in rows[:2])  # what each update computed
    assert all(r["skipped"].startswith("not run: projected") for r in rows[2:])
    assert out.with_suffix(".png").is_file() and "peak GiB" in capsys.readouterr().out


def test_projection_is_proportional_to_T_above_the_base_memory():
    rows = [{"model": "m", "T": 10, "seconds": 6.0, "peak_gib": 1.0}, {"model": "m", "T": 100, "seconds": 60.0,
                                                                       "peak_gib": 2.0}]
    assert projected(rows, "m", 1000) == (20.0, 10.0)  # no base recorded: all of it proportional
    rows[1]["base_gib"] = 0.5  # the interpreter, torch and the model do not grow with T
    assert projected(rows, "m", 1000) == (0.5 + 1.5 * 10, 10.0)
    assert projected(rows, "other", 1000) is None


def test_long_benchmark_uses_a_trained_runs_model_as_configured(tmp_path):
    """--run: the run's own config (preset, head, k_att), not the benchmark's flags for a fresh model."""
    model_cfg = SABConfig(model="sab", preset="recommended", hidden_size=8, k_top=2, k_att=2, k_trunc=3, attn_dim=8,
                          head_hidden=4)
    train(model_cfg, TrainConfig(task="copy", T=3, batch_size=2, steps=1, eval_batches=1, seed=0),
          tmp_path / "run", progress=False)
    out = tmp_path / "long.json"
    assert main(["bench", "long", "--T", "40", "--models", "sab-engine", "--batch-size", "2", "--run",
                 str(tmp_path / "run"), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    (row,) = saved["rows"]
    assert "failed" not in row and row["ms_per_step"] > 0
    assert saved["run_model"]["head_hidden"] == 4 and saved["run_model"]["k_att"] == 2  # what the rows ran
