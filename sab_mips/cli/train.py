"""``sab-mips train``: train a model on a task, or resume a run."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..devices import set_threads
from ..errors import UserError
from ..model import SABConfig
from ..training import TrainConfig, format_summary, train
from .flags import TASK_SIZED, add_compute_flags, add_config_flags, configs_from_args

HELP = "train a model on a task (or resume a run)"
DESCRIPTION = ("Train a model on a synthetic task. Flags override --config; on --resume the saved config is the "
               "base and only --steps, --time-budget, --audit-every and --grad-cosine-every may differ.")


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser.add_argument_group("model (SABConfig)"), SABConfig, skip=TASK_SIZED)
    add_config_flags(parser.add_argument_group("training (TrainConfig)"), TrainConfig)
    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", required=True, help="directory for config.json, metrics.jsonl, checkpoint.pt")
    run.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    run.add_argument("--config", metavar="FILE", help='JSON config: {"model": {...}, "train": {...}} or one flat object')
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_compute_flags(run)
    run.add_argument("--record-memories", metavar="FILE",
                     help="after training, save the keys W_k m_i and queries the index saw (.npz) for retrieval benchmarks")
    run.add_argument("--record-count", type=int, metavar="N",
                     help="collect at least this many keys for --record-memories (default: 100000)")


def run(args: argparse.Namespace) -> int:
    if args.record_count is not None and args.record_memories is None:
        raise UserError("--record-count applies to --record-memories only")
    record_count = 100_000 if args.record_count is None else args.record_count
    if record_count < 1:
        raise UserError(f"--record-count must be >= 1, got {record_count}")
    set_threads(args.threads)
    model_cfg, train_cfg = configs_from_args(args)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if main_process:
        print(f"run {args.run_dir}: {json.dumps({'model': model_cfg.to_dict(), 'train': train_cfg.to_dict()})}")
    summary = train(model_cfg, train_cfg, args.run_dir, resume=args.resume, progress=not args.no_progress,
                    record_memories=args.record_memories, record_count=record_count, device=args.device)
    if main_process:
        print(format_summary(summary))
    if summary["processes"] > 1:
        leave_without_teardown()
    return 0


def leave_without_teardown() -> None:
    """End a finished torchrun worker now, skipping the interpreter's teardown.

    The run is complete: its files are written and closed, and every rank has passed the final barrier and
    left the process group (``Distributed.close``). What teardown would still do is destroy objects in
    arbitrary order, gloo's among them; about one two-process run in 60 then aborted there ("terminate
    called without an active exception", SIGABRT) although its work was done, and torchrun reports such a
    run as failed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
