"""Progress reporting: a bar counting what ends the run on a terminal, a line every so often in a log."""
import io

from sab_mips.training import progress
from sab_mips.training.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_time_budget_bar_counts_seconds_not_steps():
    stream = Terminal()
    with Progress("copy", steps=100_000, time_budget=180, step=0, elapsed=0.0, stream=stream) as bar:
        bar.update(50, 90.0, loss="0.1")
        assert bar.bar.total == 180 and bar.bar.n == 90
    assert "step=50" in stream.getvalue()


def test_a_step_bar_counts_steps():
    with Progress("copy", steps=10, time_budget=0, step=2, elapsed=0.0, stream=Terminal()) as bar:
        bar.update(3, 1.0)
        assert bar.bar.total == 10 and bar.bar.n == 3


def test_a_log_gets_a_line_per_interval_not_per_update(monkeypatch):
    stream = io.StringIO()  # not a terminal
    bar = Progress("copy T=5 sab", steps=10, time_budget=60, step=0, elapsed=0.0, stream=stream)
    for step in range(1, 6):
        bar.update(step, float(step), loss="0.5")
    assert stream.getvalue() == ""  # within LOG_INTERVAL: nothing yet
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    bar.update(6, 6.0, loss="0.4")
    # 6 updates in 6 s: the 4 left take 4 s at that pace (less than what the budget leaves)
    assert stream.getvalue() == "copy T=5 sab: step 6/10, 6 of 60 s, ETA 4 s, loss=0.4\n"
    bar.close()


def test_the_eta_is_this_invocations_pace_capped_by_the_time_budget(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    stream = io.StringIO()
    resumed = Progress("copy", steps=100, time_budget=0, step=40, elapsed=400.0, stream=stream)  # a resumed run
    resumed.update(50, 420.0)  # 10 updates in 20 s: 50 left take 100 s
    assert ", ETA 100 s" in stream.getvalue()
    stream = io.StringIO()
    budgeted = Progress("copy", steps=1000, time_budget=30, step=0, elapsed=0.0, stream=stream)
    budgeted.update(10, 20.0)  # 990 left would take 1980 s; the budget leaves 10
    assert ", ETA 10 s" in stream.getvalue()


def test_disabled_progress_writes_nothing():
    stream = Terminal()
    with Progress("copy", steps=10, time_budget=0, step=0, elapsed=0.0, enabled=False, stream=stream) as bar:
        bar.update(1, 1.0)
    assert stream.getvalue() == ""
