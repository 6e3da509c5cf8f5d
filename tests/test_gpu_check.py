"""scripts/gpu_check.sh in its dry mode: every CUDA step reported as skipped with its reason, exit 0."""
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_dry_gpu_check_reports_every_cuda_step_skipped(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(SCRIPT), "--dry", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable}, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[0] == "info: ok" and (out / "info.txt").read_text().startswith("python")
    steps = [line.split(":")[0] for line in lines[1:]]
    assert steps == ["tests", "bench-step", "bench-retrieval", "bench-long", "train-copy"]
    assert all("skipped: dry run (--dry)" in line for line in lines[1:])
