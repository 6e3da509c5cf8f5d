"""``sab-mips eval``: evaluate a trained run at any T (length transfer), optionally with another index."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import resolve_device, set_threads
from ..errors import UserError
from ..training import evaluate, load_run
from ..training.rundir import METRICS_FILE, MetricsLog
from .flags import add_compute_flags

HELP = "evaluate a trained run (at any T: length transfer)"
DESCRIPTION = ("Evaluate a run's checkpoint; the result is printed and appended to the run's metrics.jsonl as an "
               "eval line with \"source\": \"sab-mips eval\".")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR", help="run directory")
    parser.add_argument("--T", type=int, help="length parameter (default: the run's eval T)")
    parser.add_argument("--batches", type=int, help="number of batches (default: the run's eval_batches)")
    parser.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch_size)")
    parser.add_argument("--seed", type=int, help="seed of the eval stream (default: the run's seed)")
    add_compute_flags(parser)
    parser.add_argument("--retrieval", metavar="FACTORY_STRING",
                        help="SAB: search with this index instead of the trained one, e.g. exact or "
                             "faiss:HNSW32,efSearch=128 (indexes are rebuilt per pass: any parameter may change)")
    parser.add_argument("--audit-every", type=int, default=0, metavar="N",
                        help="SAB: compare every N-th attention step with exact search and report recall@k_top and "
                             "the attention mass recovered, and the same over every step the task's metric reads "
                             "(scored_recall, scored_mass_recovered) (0: no audit)")
    parser.add_argument("--chunk", type=int,
                        help="SAB and dense: time steps fed to the model at once (memory holds the slots, not T; "
                             "default 1000)")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    model, task, model_cfg, train_cfg, state = load_run(args.run)
    retrieval: dict[str, str] = {}
    if args.retrieval is not None:
        if model_cfg.model != "sab":
            raise UserError(f"--retrieval applies to model 'sab' only; this run is model '{model_cfg.model}'")
        model.set_retrieval(args.retrieval)
        retrieval = {"retrieval": args.retrieval}
    T = args.T if args.T is not None else (train_cfg.eval_T or train_cfg.T)
    batches = args.batches if args.batches is not None else train_cfg.eval_batches
    batch_size = args.batch_size if args.batch_size is not None else train_cfg.batch_size
    seed = args.seed if args.seed is not None else train_cfg.seed
    if args.audit_every and model_cfg.model != "sab":
        raise UserError(f"--audit-every applies to model 'sab' only; this run is model '{model_cfg.model}'")
    if args.chunk is not None and not hasattr(model, "predict"):
        raise UserError(f"--chunk applies to models with a memory (sab, dense); this run is model '{model_cfg.model}'")
    chunk = 1000 if args.chunk is None else args.chunk
    if args.audit_every < 0:
        raise UserError(f"--audit-every must be >= 0, got {args.audit_every}")
    for name, value in (("--batches", batches), ("--batch-size", batch_size), ("--chunk", chunk)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    model.to(resolve_device(args.device))
    metrics = evaluate(model, task, T, batches, seed, batch_size, audit_every=args.audit_every, timed=True,
                       chunk=chunk)
    with MetricsLog(Path(args.run) / METRICS_FILE) as log:
        log.write({"split": "eval", "step": int(state["step"]), "T": T, **metrics, "source": "sab-mips eval",
                   "seed": seed, "batches": batches, "batch_size": batch_size, **retrieval})
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    searched = f" retrieval={args.retrieval}" if args.retrieval is not None else ""
    print(f"eval {args.run} step={state['step']} task={task.name} T={T} (trained at T={train_cfg.T}){searched}: {shown}")
    reason = model.audit_skip_reason() if args.audit_every else None
    if reason:
        print(f"audit {reason}")
    return 0
