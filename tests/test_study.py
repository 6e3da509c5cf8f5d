"""experiments/study.py: the collapse rule and the table over seeds, on a tiny plan."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_collapse_rule():
    evals = [(100, 0.2), (200, 0.6), (300, 0.55), (400, 0.35), (500, 0.3), (600, 0.7), (700, 0.45)]
    # passes 50% at 200; falls to 0.35 (> 0.2 below 0.6): one collapse lasting two evals; then 0.45 < 0.7 - 0.2
    assert study.collapses(evals, after=0.5, drop=0.2) == 2
    assert study.collapses([(1, 0.4), (2, 0.1)], after=0.5, drop=0.2) == 0  # never passed 50%
    assert study.falls(evals, after=0.5, drop=0.2) == [(400, 0.6, 0.35), (700, 0.7, 0.45)]


def test_value_at_and_first_reaching():
    evals = [(250, 0.1), (500, 0.5), (750, 0.99)]
    assert study.value_at(evals, 600) == 0.5 and study.value_at(evals, 1000) is None
    assert study.first_reaching(evals, 0.99, higher=True) == 750


def _tiny_plan(tmp_path: Path) -> Path:
    """Two seeds of a 4-update LSTM on copy T=3, evaluated every 2 updates."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "root": str(tmp_path / "runs"),
        "common": ["--task", "copy", "--T", "3", "--hidden-size", "8", "--batch-size", "2", "--steps", "4",
                   "--eval-every", "2", "--eval-batches", "1"],
        "settings": {"lstm": {"flags": ["--model", "lstm"], "seeds": [0, 1]}}}))
    return plan


def test_run_and_table_on_a_tiny_plan(tmp_path, capsys):
    plan = _tiny_plan(tmp_path)
    assert study.main(["run", str(plan), "--parallel", "2"]) == 0
    assert study.main(["table", str(plan), "--at", "2", "4", "8"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lstm")][0]
    assert "n=2/2" in row and "– (0/2)" in row  # steps 2 and 4 reached by both runs, 8 by none
    cells = [c.strip() for c in row.strip("|").split("|")]
    # columns: setting, @2, @4, @8, at the end, best, updates done, ...; the end is the eval at step 4
    assert cells[4] == cells[2] and cells[6] == "4, 4"
    assert study.main(["table", str(plan), "--at", "2", "4", "--per-run"]) == 0
    per_run_table = capsys.readouterr().out.split("| setting | seed |")[1]
    per_run = [line for line in per_run_table.splitlines() if line.startswith("| lstm | ")]
    assert [line.split("|")[2].strip() for line in per_run] == ["0", "1"]  # one row per seed


def test_run_only_some_seeds_and_fewer_steps_then_continue(tmp_path):
    plan = _tiny_plan(tmp_path)
    with pytest.raises(SystemExit, match="no run has seed 7"):  # a typo, not a silent no-op
        study.main(["run", str(plan), "--seeds", "1", "7"])
    assert study.main(["run", str(plan), "--seeds", "1", "--steps", "2", "--parallel", "1"]) == 0
    assert not (tmp_path / "runs" / "lstm-s0").exists()
    steps = lambda: [r["step"] for r in study.read_metrics(tmp_path / "runs" / "lstm-s1" / "metrics.jsonl")
                     if r["split"] == "train"]
    assert steps() == [1, 2]
    assert study.main(["run", str(plan), "--seeds", "1", "--parallel", "1"]) == 0  # the plan's own 4 steps
    assert steps() == [1, 2, 3, 4]


def test_run_only_some_settings(tmp_path):
    plan = _tiny_plan(tmp_path)
    data = json.loads(plan.read_text())
    data["settings"]["tbptt"] = {"flags": ["--model", "tbptt", "--k-trunc", "2"], "seeds": [0, 1]}
    plan.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="no setting dense"):
        study.main(["run", str(plan), "--settings", "dense"])
    assert study.main(["run", str(plan), "--settings", "tbptt", "--seeds", "1", "--parallel", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == ["tbptt-s1"]


def test_curves_draws_one_panel_per_group(tmp_path):
    plan = _tiny_plan(tmp_path)
    assert study.main(["run", str(plan), "--parallel", "2"]) == 0
    out = tmp_path / "curves.png"
    runs = [str(tmp_path / "runs" / f"lstm-s{seed}") for seed in (0, 1)]
    assert study.main(["curves", str(out), "--panel", "seed 0", runs[0], "--panel", "both", *runs]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="at least one run directory"):
        study.main(["curves", str(out), "--panel", "empty"])
    with pytest.raises(SystemExit, match="no metrics.jsonl in"):
        study.main(["curves", str(out), "--panel", "typo", str(tmp_path / "runs" / "lstm-s9")])
