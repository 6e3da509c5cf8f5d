"""Progress of a training run: a bar on a terminal, a line every half minute in a log.

The bar counts what will end the run: updates towards ``steps``, or seconds towards ``time_budget`` when
a budget is set (a 3-minute run shows 3 minutes, not a few percent of 100,000 steps). When the output is
not a terminal (a log file, CI) a progress bar would write a line per refresh; one plain line every
``LOG_INTERVAL`` seconds is written instead.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines when the output is not a terminal


class Progress:
    """``update(step, elapsed, **values)`` after every update; ``close()`` at the end (or use ``with``)."""

    def __init__(self, description: str, steps: int, time_budget: float, step: int, elapsed: float,
                 enabled: bool = True, stream: TextIO | None = None) -> None:
        self.description, self.steps, self.time_budget = description, steps, time_budget
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.start_step, self.start_elapsed = step, elapsed  # this invocation's pace gives the ETA of log lines
        self.bar: tqdm | None = None
        self.last_line = time.perf_counter()
        if enabled and self.stream.isatty():
            if time_budget:
                self.bar = tqdm(total=round(time_budget), initial=min(round(elapsed), round(time_budget)), unit="s",
                                desc=description, dynamic_ncols=True, file=self.stream)
            else:
                self.bar = tqdm(total=steps, initial=min(step, steps), desc=description, dynamic_ncols=True,
                                file=self.stream)

    def update(self, step: int, elapsed: float, **values: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            done = min(round(elapsed), round(self.time_budget)) if self.time_budget else min(step, self.steps)
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(step=step, **values) if self.time_budget else self.bar.set_postfix(**values)
        elif time.perf_counter() - self.last_line >= LOG_INTERVAL:
            self.last_line = time.perf_counter()
            self.write_line(step, elapsed, values)

    def write_line(self, step: int, elapsed: float, values: dict[str, str]) -> None:
        budget = f" of {self.time_budget:.0f} s" if self.time_budget else " s"
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        print(f"{self.description}: step {step}/{self.steps}, {elapsed:.0f}{budget}{self.eta(step, elapsed)}, {shown}",
              file=self.stream, flush=True)

    def eta(self, step: int, elapsed: float) -> str:
        """", ETA N s": the time left at this invocation's pace (updates per second since it started), or at
        most what the time budget leaves; "" before the pace is known."""
        done, spent = step - self.start_step, elapsed - self.start_elapsed
        if done <= 0 or spent <= 0:
            return ""
        left = (self.steps - step) * spent / done
        if self.time_budget:
            left = min(left, max(0.0, self.time_budget - elapsed))
        return f", ETA {left:.0f} s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
