"""experiments/replay_memory.py on a tiny recorded memory: exact indexes replay with recall 1, an index that
misses is caught, and the calling pattern reports exact search as its own baseline."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("replay_memory", ROOT / "experiments" / "replay_memory.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def test_replay_reports_recall_and_the_calling_pattern(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(120, 8, generator=g), dim=1)
    queries = torch.randn(600, 8, generator=g)
    memories = tmp_path / "mem.npz"
    np.savez(memories, keys=keys.numpy(), queries=queries.numpy(), dim=np.int64(8))
    out = tmp_path / "replay.json"
    argv = ["--memories", str(memories), "--k-att", "5", "--k-top", "3", "--queries", "30", "--skip", "20",
            "--batch-sizes", "2", "--n", "100", "--steps", "40", "--out", str(out),
            "--indexes", "dedup:tol=0", "simple-lsh:bits=12,tables=1"]
    assert replay.main(argv) == 0
    result = json.loads(out.read_text())
    recall = {row["index"]: row["recall"] for row in result["recall"]}
    assert recall["exact"] == 1.0 and recall["dedup:tol=0"] == 1.0
    assert recall["simple-lsh:bits=12,tables=1"] < 1.0  # one table of 12 bits misses some of the top 3
    pattern = {row["index"]: row for row in result["pattern"]}
    assert set(pattern) == {"exact", "dedup:tol=0", "simple-lsh:bits=12,tables=1"}
    assert pattern["exact"]["ratio_to_exact"] == 1.0 and all(row["B"] == 2 for row in pattern.values())
