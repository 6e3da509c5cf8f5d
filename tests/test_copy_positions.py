"""experiments/copy_positions.py: per-output-step accuracy of a trained copy run agrees with the task's own
accuracy on the same sequences, and runs of other tasks are refused."""
import importlib.util
from pathlib import Path

import pytest
import torch

from sab_mips.model.config import SABConfig
from sab_mips.tasks import batch_generator
from sab_mips.training import TrainConfig, train
from sab_mips.training.rundir import load_run

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("copy_positions", ROOT / "experiments" / "copy_positions.py")
positions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(positions)


def _run(tmp_path: Path, task: str) -> Path:
    model_cfg = SABConfig(model="sab", hidden_size=8, k_top=2, k_att=2, k_trunc=3)
    train(model_cfg, TrainConfig(task=task, T=4, batch_size=4, steps=3, eval_every=3, eval_batches=1), tmp_path,
          progress=False)
    return tmp_path


def test_per_position_accuracy_agrees_with_the_task_metric(tmp_path):
    run = _run(tmp_path, "copy")
    rows = positions.position_accuracy(run, [4, 7], batch_size=16, seed=3)
    model, task, _, _, _ = load_run(run)
    model.eval()
    for row in rows:
        x, y = task.make_batch(row["T"], 16, batch_generator(3, 0, "eval"))
        with torch.no_grad():
            expected = task.metrics(model(x), y)["accuracy"]
        assert len(row["per_position"]) == 10 and row["step"] == 3
        assert row["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_refuses_runs_of_other_tasks(tmp_path):
    with pytest.raises(SystemExit, match="copy runs only"):
        positions.position_accuracy(_run(tmp_path, "adding"), [4], batch_size=2, seed=0)
