"""``sab-mips bench long`` end to end at tiny lengths (its timings are not checked here), and its projection
of memory from measured rows."""
import json

import pytest

from sab_mips import SABConfig, TrainConfig
from sab_mips.bench.long import fit_from, projected, run_child
from sab_mips.devices import peak_rss_gib
from sab_mips.cli import main
from sab_mips.training import train


def test_long_benchmark_measures_each_row_in_a_child_and_skips_what_it_projects_too_big(tmp_path, capsys):
    out = tmp_path / "long.json"
    argv = ["--T", "40", "4000", "--models", "sab-engine", "sab-mips", "--batch-size", "2", "--hidden-size", "8",
            "--approx", "simple-lsh:bits=8,tables=1", "--audit-every", "1", "--max-gib", "1000",
            "--max-minutes", "0.0001", "--out", str(out)]
    assert main(["bench", "long", *argv]) == 0
    record = json.loads(out.read_text())
    assert record["command"] == "sab-mips bench long " + " ".join(argv)  # the record says how to rerun it
    rows = record["rows"]
    assert [(r["model"], r["T"]) for r in rows] == [("sab-engine", 40), ("sab-mips", 40), ("sab-engine", 4000),
                                                     ("sab-mips", 4000)]
    assert all(r["peak_gib"] >= r["base_gib"] > 0 and r["ms_per_step"] > 0 for r in rows[:2])
    engine, mips = rows[:2]
    assert 0 <= mips["recall"] <= 1 and 0 <= mips["mass_recovered"] <= 1 and "recall" not in engine
    # the audits ran in a pass of their own after the timed update: reported apart, not in its numbers
    assert mips["audits"] == "on" and 0 < mips["audit_seconds"] <= mips["audit_pass_seconds"]
    assert mips["peak_with_audit_gib"] >= mips["peak_gib"] and "audit_pass_seconds" not in engine
    assert engine["index_seconds"] > 0 and mips["index_seconds"] > 0  # each update's own time in its index
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in rows[:2])  # what each update computed
    # T=4000 is at most 8 chunks: no probes; one row gives time but no memory line, and time is too long
    for r, done in zip(rows[2:], rows[:2]):
        minutes = (done["seconds"] + done.get("audit_pass_seconds", 0.0)) * 100 / 60
        assert r["projected_minutes"] == pytest.approx(minutes) and r["projected_gib"] is None
        assert r["skipped"] == f"not run: projected memory unknown, {minutes:.0f} min"
    printed = capsys.readouterr().out
    assert out.with_suffix(".png").is_file() and "audit s" in printed and "in neither ms/step nor peak GiB" in printed


def test_memory_is_projected_on_a_line_through_the_measured_rows():
    def row(T, gib, seconds=1.0, **extra):
        return {"model": "sab-engine", "T": T, "seconds": seconds, "peak_gib": gib, **extra}

    # 0.5 GiB fixed and 1 KiB per step; the row at T=100 is within the first two chunks (chunk 100) and
    # its graph still grows with T: off the line, and left out of it
    rows = [row(100, 0.45), row(1000, 0.5 + 1000 / 2**20), row(3000, 0.5 + 3000 / 2**20, seconds=6.0,
                                                                  audit_pass_seconds=3.0)]
    guess = projected(rows, "sab-engine", 10**6, fit_from("sab-engine", 100))
    assert guess.gib == pytest.approx(0.5 + 10**6 / 2**20) and guess.fixed_gib == pytest.approx(0.5)
    assert guess.per_step_kib == pytest.approx(1.0)
    assert guess.minutes == pytest.approx(9.0 / 3000 * 10**6 / 60)  # from the longest row, audit pass included
    # one row on the line is not a line: time only
    assert projected(rows[:2], "sab-engine", 10**6, 200) == (None, pytest.approx(10**6 / 1000 / 60), None, None)
    # RSS noise can make a longer row smaller: memory does not shrink with T, the largest peak stays
    assert projected([row(1000, 0.6), row(2000, 0.55)], "sab-engine", 10**6).gib == 0.6
    assert projected(rows, "lstm", 10**6) is None


def test_projection_from_two_short_rows_is_within_2x_of_a_measured_longer_row():
    """The projection from T=60 and 120 against the row measured at T=480 (the old projection, in proportion
    to T above the base, came out 2.5x too high here). What grows with T dominates: a slot every step (k_att=1)
    for a batch of 64. The part above ``base_gib`` (the process before the batch) is what is projected."""
    argv = ["--models", "sab-engine", "--batch-size", "64", "--k-att", "1", "--chunk", "15"]
    ballast = bytearray(512 * 2**20)  # this process's peak, raised on purpose: a row must not read it as its own
    ballast[::4096] = b"\1" * len(ballast[::4096])
    parent_peak = peak_rss_gib()
    del ballast
    rows = [run_child("sab-engine", T, None, argv) for T in (60, 120, 480)]
    assert not any("failed" in r for r in rows), rows
    assert all(r["peak_gib"] < parent_peak - 0.25 for r in rows), (parent_peak, rows)
    # a high-water mark: an update whose peak stays under the process's start-up peak would measure nothing
    assert all(r["peak_gib"] > r["base_gib"] for r in rows), f"start-up peak above the updates' peaks: {rows}"
    guess = projected(rows[:2], "sab-engine", 480, fit_from("sab-engine", 15))
    base = rows[2]["base_gib"]
    ratio = (guess.gib - base) / (rows[2]["peak_gib"] - base)
    assert 0.5 <= ratio <= 2, (ratio, rows)


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
