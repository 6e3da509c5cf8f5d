"""The schedule every training loop follows: update, evaluate every ``eval_every`` updates, checkpoint every
``checkpoint_every``, stop at ``steps`` (or when told to), then evaluate and checkpoint what is not yet."""
from __future__ import annotations

from typing import Any, Callable

from .progress import Progress


def run_updates(trainer: Any, description: str, shown: Callable[[dict[str, Any]], dict[str, str]],
                out_of_time: Callable[[], bool]) -> str:
    """Drive ``trainer`` (``Trainer`` or ``StreamTrainer``: ``train_cfg``, ``step``, ``elapsed``,
    ``progress``, ``train_step()``, ``evaluate()``, ``checkpoint()``, ``last_eval_step``, ``saved_step``)
    to its last update; ``shown(line)`` gives the progress bar's values of a metrics line. Returns what
    stopped it: ``"steps"`` or ``"time_budget"`` (``out_of_time()`` was true before an update)."""
    cfg = trainer.train_cfg
    stopped = "steps"
    with Progress(description, cfg.steps, cfg.time_budget, trainer.step, trainer.elapsed, trainer.progress) as bar:
        while trainer.step < cfg.steps:
            if out_of_time():
                stopped = "time_budget"
                break
            line = trainer.train_step()
            bar.update(trainer.step, trainer.elapsed, **shown(line))
            if trainer.step % cfg.eval_every == 0:
                trainer.evaluate()
            if trainer.step % cfg.checkpoint_every == 0:
                trainer.checkpoint()
        if trainer.last_eval_step != trainer.step:
            trainer.evaluate()
        if trainer.saved_step != trainer.step:
            trainer.checkpoint()
    return stopped
