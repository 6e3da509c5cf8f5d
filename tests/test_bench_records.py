"""Every benchmark record says where it comes from: the command that reruns it, the commit of the code that
ran (``-dirty`` when the checkout differed, None outside git), the machine's core count, torch and the date."""
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from sab_mips.bench import common
from sab_mips.cli import main


def expected_commit() -> str | None:
    """What ``git`` itself says of this checkout (None when the tests do not run from one)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(common.SOURCE_ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != common.SOURCE_ROOT:
            return None
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


TINY = {
    "step": ["--T", "4", "--models", "lstm", "--batch-size", "2", "--hidden-size", "4", "--rounds", "1",
             "--threads", "1"],
    "retrieval": ["--sizes", "50", "--indexes", "faiss:Flat", "--datasets", "gaussian", "--dim", "4",
                  "--queries", "2", "--k", "2", "--repeats", "1", "--pattern-indexes"],
}


ROWS = {"step": [("lstm", None, 4)], "retrieval": [(None, "exact", 50), (None, "faiss:Flat", 50)]}


@pytest.mark.parametrize("benchmark", sorted(TINY))
def test_a_benchmark_record_holds_its_command_commit_and_machine(tmp_path, benchmark):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    if benchmark == "retrieval":
        argv, path = [*TINY[benchmark], "--out", str(tmp_path)], tmp_path / "retrieval.json"
    else:
        argv, path = [*TINY[benchmark], "--out", str(tmp_path / "b.json")], tmp_path / "b.json"
    commit = expected_commit()  # before the run: the run writes nothing into the checkout
    assert main(["bench", benchmark, *argv]) == 0
    record = json.loads(path.read_text())
    assert record["command"] == f"sab-mips bench {benchmark} " + " ".join(argv)
    assert record["git_commit"] == commit
    assert record["cpu_count"] == os.cpu_count() and record["torch"] == torch.__version__
    assert before <= datetime.fromisoformat(record["date"]) <= datetime.now(timezone.utc)
    # what ran (an index's name without the parameters it adds, e.g. its threads)
    ran = [(r.get("model"), r["index"].split(",")[0] if "index" in r else None, r.get("T", r.get("N")))
           for r in record["rows"]]
    assert ran == ROWS[benchmark]


def test_the_command_is_quoted_for_a_shell():
    command = common.bench_command("heavy", ["--retrieval", "exact", "faiss:IVF64,nprobe=8", "a b"])
    assert command == "sab-mips bench heavy --retrieval exact faiss:IVF64,nprobe=8 'a b'"


def test_commit_is_none_outside_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "SOURCE_ROOT", tmp_path)  # e.g. an installed package: no repository there
    assert common.git_commit() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    assert common.git_commit() is None


def test_commit_is_marked_dirty_when_the_checkout_differs_from_it(tmp_path, monkeypatch):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()
    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(common, "SOURCE_ROOT", tmp_path.resolve())
    head = git("rev-parse", "--short", "HEAD")
    assert common.git_commit() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_commit() == head + "-dirty"


def test_the_record_names_the_code_as_it_was_when_the_benchmark_started(monkeypatch):
    monkeypatch.setattr(common, "_STARTED", {})
    monkeypatch.setattr(common, "git_commit", lambda: "abc1234")
    common.prepare(torch.get_num_threads())  # every benchmark's first step
    monkeypatch.setattr(common, "git_commit", lambda: "abc1234-dirty")  # the checkout edited during the run
    assert common.provenance("sab-mips bench step")["git_commit"] == "abc1234"
