"""``sab-mips eval``: evaluate a trained run at any T (length transfer), optionally with another index."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import resolve_device, set_threads
from ..errors import UserError
from ..corpora import SPLITS
from ..model import KERNELS, SABLSTM
from ..tasks import PixelTask
from ..training import evaluate, load_run
from ..training.rundir import METRICS_FILE, MetricsLog, saved_task
from ..training.stream import evaluate_stream, load_stream_run
from .flags import add_compute_flags

HELP = "evaluate a trained run (at any T: length transfer), through one index or several side by side"
DESCRIPTION = ("Evaluate a run's checkpoint; each result is printed and appended to the run's metrics.jsonl as an "
               "eval line with \"source\": \"sab-mips eval\". With several --retrieval strings the same batches "
               "are evaluated through each, and a table compares them (accuracy, time per step, recall).")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR", help="run directory")
    parser.add_argument("--T", type=int, help="length parameter (default: the run's eval T)")
    parser.add_argument("--batches", type=int, help="number of batches (default: the run's eval_batches; image runs: "
                                                    "the whole split)")
    parser.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch_size)")
    parser.add_argument("--seed", type=int, help="seed of the eval stream (default: the run's seed)")
    add_compute_flags(parser)
    parser.add_argument("--retrieval", metavar="FACTORY_STRING", nargs="+",
                        help="SAB: search with this index instead of the trained one, e.g. exact or "
                             "faiss:HNSW32,efSearch=128 (indexes are rebuilt per pass: any parameter may change); "
                             "several: one evaluation through each, and a table of them")
    parser.add_argument("--audit-every", type=int, default=0, metavar="N",
                        help="SAB: compare every N-th attention step with exact search and report recall@k_top and "
                             "the attention mass recovered, and the same over every step the task's metric reads "
                             "(scored_recall, scored_mass_recovered) (0: no audit)")
    parser.add_argument("--kernel", choices=KERNELS, help="SAB: where its steps run (default: the run's kernel; "
                                                          "see sab-mips train --help)")
    parser.add_argument("--split", choices=SPLITS, help="text runs: the split to stream (default valid); image runs: "
                                                        "the held-out split to classify, valid (default) or test, "
                                                        "all of it unless --batches")
    parser.add_argument("--memory-slots", type=int, metavar="N",
                        help="text runs, SAB: cap the memory at N slots per stream (default: the run's; 0: the "
                             "whole split), e.g. a larger memory than training used")
    parser.add_argument("--memory-from", choices=("empty", "training"),
                        help="text runs: stream the split from an empty state (default), or continue the "
                             "checkpoint's training streams, (h, c) and memory (slots written with the weights "
                             "of their time)")
    parser.add_argument("--chars", type=int, metavar="N",
                        help="text runs: stream only the first N // B characters of each of the B streams, in whole "
                             "windows (a quick reading of a long split; default 0: the whole split)")
    parser.add_argument("--attention-every", type=int, metavar="N",
                        help="text runs, SAB: record the attention of every N-th window: how far back the "
                             "attended slots lie and the share on slots older than the window (default 10; 0: "
                             "none)")
    parser.add_argument("--chunk", type=int,
                        help="SAB and dense: time steps fed to the model at once (memory holds the slots, not T; "
                             "default 1000)")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if saved_task(args.run) == "text":
        return run_text(args)
    for name in ("memory_slots", "attention_every", "memory_from", "chars"):
        if getattr(args, name) is not None:
            raise UserError(f"--{name.replace('_', '-')} applies to runs of task 'text' only")
    model, task, model_cfg, train_cfg, state = load_run(args.run)
    if args.split is not None and not isinstance(task, PixelTask):
        raise UserError("--split applies to runs of the text and image tasks only")
    if isinstance(task, PixelTask):  # an image run evaluates a held-out split, by default the whole of it
        split = args.split or "valid"
        if split == "train":
            raise UserError("--split: an image run is evaluated on valid or test (training images are drawn at random)")
        task = task.held_out(split)
    kernel_flag(model, args.kernel)
    if args.retrieval is not None and model_cfg.model != "sab":
        raise UserError(f"--retrieval applies to model 'sab' only; this run is model '{model_cfg.model}'")
    T = args.T if args.T is not None else (train_cfg.eval_T or train_cfg.T)
    batch_size = args.batch_size if args.batch_size is not None else train_cfg.batch_size
    whole_split = task.eval_batches(batch_size) if batch_size >= 1 else None
    batches = (args.batches if args.batches is not None
               else whole_split if whole_split is not None else train_cfg.eval_batches)
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
    for retrieval in args.retrieval or []:  # every string checked before the first (possibly long) evaluation
        model.set_retrieval(retrieval)
    model.to(resolve_device(args.device))
    rows = []
    for retrieval in args.retrieval or [None]:
        if retrieval is not None:
            model.set_retrieval(retrieval)
        metrics = evaluate(model, task, T, batches, seed, batch_size, audit_every=args.audit_every, timed=True,
                           chunk=chunk)
        searched = {} if retrieval is None else {"retrieval": retrieval}
        held_out = {"data": task.eval_split} if isinstance(task, PixelTask) else {}
        with MetricsLog(Path(args.run) / METRICS_FILE) as log:
            log.write({"split": "eval", "step": int(state["step"]), "T": T, **metrics, "source": "sab-mips eval",
                       "seed": seed, "batches": batches, "batch_size": batch_size, **held_out, **searched})
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        named = f" retrieval={retrieval}" if retrieval is not None else ""
        where = f" {task.eval_split} split" if isinstance(task, PixelTask) else ""
        print(f"eval {args.run} step={state['step']} task={task.name}{where} T={T} (trained at T={train_cfg.T}){named}: "
              f"{shown}", flush=True)
        reason = model.audit_skip_reason() if args.audit_every else None
        if reason:
            print(f"audit {reason}")
        rows.append((retrieval or model_cfg.retrieval, metrics))
    if len(rows) > 1:
        print(comparison_table(rows, task.primary, f"T={T}, {batches * batch_size} sequences:"))
    return 0


def run_text(args: argparse.Namespace) -> int:
    """``eval`` of a text run: bits per character of a whole split streamed through the model and its memory."""
    for name in ("T", "batches", "chunk", "seed"):
        if getattr(args, name) is not None:
            raise UserError(f"--{name.replace('_', '-')} does not apply to a text run (it streams a whole split)")
    model, corpus, train_cfg, state = load_stream_run(args.run)
    kernel_flag(model, args.kernel)
    split = args.split or "valid"
    batch = args.batch_size if args.batch_size is not None else train_cfg.batch_size
    if args.memory_from == "training" and batch != train_cfg.batch_size:
        raise UserError(f"--memory-from training continues the run's {train_cfg.batch_size} streams: leave "
                        f"--batch-size out")
    memory_slots = args.memory_slots if args.memory_slots is not None else train_cfg.memory_slots
    sab = isinstance(model, SABLSTM)
    attention_every = (10 if sab else 0) if args.attention_every is None else args.attention_every
    chars = args.chars or 0
    if batch < 1 or memory_slots < 0 or args.audit_every < 0 or attention_every < 0 or chars < 0:
        raise UserError(f"need --batch-size >= 1 and --memory-slots, --audit-every, --attention-every, --chars >= 0; "
                        f"got {batch}, {memory_slots}, {args.audit_every}, {attention_every} and {chars}")
    if (args.retrieval or args.audit_every or args.memory_slots is not None or attention_every) and not sab:
        raise UserError("--retrieval, --audit-every, --memory-slots and --attention-every apply to model 'sab' only")
    model.to(resolve_device(args.device))
    rows = []
    for retrieval in args.retrieval or [None]:
        if retrieval is not None:
            model.set_retrieval(retrieval)
        start = state["stream_state"] if args.memory_from == "training" else None
        metrics = evaluate_stream(model, train_cfg, corpus.splits[split], batch, memory_slots=memory_slots,
                                  max_chars=chars, audit_every=args.audit_every, attention_every=attention_every,
                                  start=start)
        searched = {} if retrieval is None else {"retrieval": retrieval}
        with MetricsLog(Path(args.run) / METRICS_FILE) as log:
            log.write({"split": "eval", "step": int(state["step"]), "data": split, **metrics,
                       "source": "sab-mips eval", "batch_size": batch, "memory_cap": memory_slots,
                       "memory_from": args.memory_from or "empty", **searched})
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not isinstance(v, list))
        print(f"eval {args.run} step={state['step']} {split} of {train_cfg.data}"
              f"{f' retrieval={retrieval}' if retrieval else ''}: {shown}", flush=True)
        rows.append((retrieval or model.config.retrieval, metrics))
    if len(rows) > 1:
        print(comparison_table(rows, "bpc", f"{split} of {train_cfg.data}, {batch} streams:"))
    return 0


def comparison_table(rows: list[tuple[str, dict[str, float]]], primary: str, heading: str) -> str:
    """The evaluations of one run through several indexes, one row each; "–" where a value was not measured
    (recall: exact search, or no --audit-every)."""
    def cell(metrics: dict[str, float], name: str, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return format(metrics[name], fmt) if name in metrics else "–".rjust(width)

    width = max(len("retrieval"), *(len(r) for r, _ in rows))
    lines = [heading,
             f"{'retrieval':<{width}}  {primary:>9}  {'ms/step':>8}  {'recall':>7}  {'scored recall':>13}"]
    for retrieval, m in rows:
        lines.append(f"{retrieval:<{width}}  {cell(m, primary, '9.4f')}  {cell(m, 'ms_per_step', '8.3f')}  "
                     f"{cell(m, 'recall', '7.4f')}  {cell(m, 'scored_recall', '13.4f')}")
    return "\n".join(lines)


def kernel_flag(model, kernel: str | None) -> None:
    """Run SAB's steps on ``kernel`` (None: the run's); refuse it for a model that has none."""
    if kernel is None:
        return
    if not isinstance(model, SABLSTM):
        raise UserError(f"--kernel applies to SAB runs only; this run is {type(model).__name__}")
    model.set_kernel(kernel)
