"""The training layer: configs of runs, the loop, run directories and checkpoints, evaluation, audits.

``config`` (``TrainConfig``), ``loop`` (``Trainer``, ``train``), ``rundir`` (the files of a run, resume
and warm start), ``evaluate``, ``audit`` (gradient cosine of approximate retrieval), ``memories``
(recording a model's MIPS problem), ``summary`` (tables of finished runs), ``progress``.
"""
from .config import EXTENDABLE, TrainConfig
from .evaluate import evaluate
from .loop import Trainer, format_summary, train
from .rundir import load_run

__all__ = ["EXTENDABLE", "TrainConfig", "Trainer", "evaluate", "format_summary", "load_run", "train"]
