"""Benchmark: one training update on very long sequences: peak memory and milliseconds per time step.

Settings (``--help``): B=8, H=128, k_att=10, k_trunc=10, k_top=5, copy-task inputs of T steps. Rows:

* ``lstm``          the fused ``nn.LSTM`` with full BPTT;
* ``sab-plain``     SAB through plain autograd (every step's activations kept), exact retrieval;
* ``sab-engine``    SAB through the memory-bounded engine (``SABLSTM.forward_backward``), exact retrieval;
* ``sab-mips``      the engine with the approximate index ``--approx``; recall@k_top against exact search
  is measured on every ``--audit-every``-th attention step of that same update.

Every row also reports the loss and accuracy its update computed on the copy batch: with ``--run`` (a
trained copy model) they show that the update at that length still solves the task.

Each row runs in a fresh child process, so its peak resident memory (``ru_maxrss``) is its own. A row whose
projection from the same row at the largest T measured exceeds ``--max-gib`` or ``--max-minutes`` is reported as
"not run: projected ..." instead: time is taken as proportional to T, and so is memory above the process's
resident size before the batch was made (the interpreter, torch and the model: ``base_gib``, which does not grow
with T). Prints a table, writes
JSON and a log-log plot. Never asserts.

Run: ``sab-mips bench long --T 1000 10000 100000 1000000``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..devices import DEVICE_HELP, resolve_device, synchronize
from ..model import PRESETS, SABConfig, build_model
from ..plots import plot_long_sequences
from ..tasks import batch_generator, get_task
from ..training import load_run
from .common import prepare, save_rows

MODELS = ("lstm", "sab-plain", "sab-engine", "sab-mips")


def measure(model_name: str, T: int, args: argparse.Namespace) -> dict:
    """One update of ``model_name`` at length T in this process: seconds, peak RSS, and recall for sab-mips."""
    task = get_task("copy")
    kind = "lstm" if model_name == "lstm" else "sab"
    fields = dict(model=kind, input_size=task.input_size, output_size=task.output_size, hidden_size=args.hidden_size)
    if kind == "sab":
        fields.update(preset=args.preset, k_top=args.k_top, k_att=args.k_att, k_trunc=args.k_trunc,
                      retrieval=args.approx if model_name == "sab-mips" else "exact")
    torch.manual_seed(args.seed)
    if args.run is not None and kind == "sab":  # the trained model as it was configured; only the index changes
        trained, _, run_cfg, _, _ = load_run(args.run)
        model = build_model(run_cfg.replace(retrieval=fields["retrieval"]))
        model.load_state_dict(trained.state_dict())
    else:
        model = build_model(SABConfig(**fields))
    device = resolve_device(args.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    base = peak_rss_gib()  # what does not grow with T: the interpreter, torch, the model
    x, y = task.make_batch(T - 2 * task.n_digits, args.batch_size, batch_generator(args.seed, 0, "train"))
    x, y = x.to(device), y.to(device)
    synchronize(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    row = {"model": model_name, "T": T}
    if model_name in ("sab-engine", "sab-mips"):
        out = model.forward_backward(x, y, task.loss, chunk=args.chunk, chunk_loss=task.chunk_loss,
                                     audit_every=args.audit_every if model_name == "sab-mips" else 0)
        logits = out.logits
        if "recall" in out.stats.as_metrics():
            row["recall"] = out.stats.as_metrics()["recall"]
            row["mass_recovered"] = out.stats.as_metrics()["mass_recovered"]
            row["index_seconds"] = out.stats.as_metrics()["retrieval_seconds"]
    else:
        logits = model(x)
        task.loss(logits, y).backward()
    optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    # what the update computed, before the step: a trained model (--run) should still solve the batch
    metrics = task.metrics(logits.detach(), y)
    row.update(loss=metrics["loss"], accuracy=metrics["accuracy"])
    row["device"] = str(device)
    if device.type == "cuda":
        row["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return {**row, "seconds": seconds, "ms_per_step": 1e3 * seconds / x.shape[1], "peak_gib": peak_rss_gib(),
            "base_gib": base}


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, GiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def run_child(model_name: str, T: int, args: argparse.Namespace, argv: list[str]) -> dict:
    """``measure`` in a fresh process (its own peak memory); a crash or a kill is reported in the row."""
    command = [sys.executable, "-m", "sab_mips", "bench", "long", *argv, "--child", model_name, str(T)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": model_name, "T": T, "failed": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def projected(rows: list[dict], model_name: str, T: int) -> tuple[float, float] | None:
    """(GiB, minutes) at T from this model's largest measured T: time proportional to T, and memory too
    above the row's ``base_gib`` (0 for rows that did not record it)."""
    done = [r for r in rows if r["model"] == model_name and "seconds" in r]
    if not done:
        return None
    last = max(done, key=lambda r: r["T"])
    base = last.get("base_gib", 0.0)
    return base + (last["peak_gib"] - base) * T / last["T"], last["seconds"] * T / last["T"] / 60


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':11s} {'T':>8s} {'ms/step':>9s} {'peak GiB':>9s} {'recall':>7s} {'accuracy':>8s}  note"]
    for r in rows:
        if "seconds" in r:
            recall = f"{r['recall']:.4f}" if "recall" in r else "-"
            accuracy = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
            lines.append(f"{r['model']:11s} {r['T']:8d} {r['ms_per_step']:9.3f} {r['peak_gib']:9.2f} {recall:>7s} "
                         f"{accuracy:>8s}")
        else:
            lines.append(f"{r['model']:11s} {r['T']:8d} {'-':>9s} {'-':>9s} {'-':>7s} {'-':>8s}  "
                         f"{r.get('skipped') or r.get('failed')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sab-mips bench long", description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=lambda s: int(float(s)), nargs="+", default=[1000, 10000, 100000, 1000000],
                        help="sequence lengths (time steps)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--k-att", type=int, default=10)
    parser.add_argument("--k-trunc", type=int, default=10)
    parser.add_argument("--k-top", type=int, default=5)
    parser.add_argument("--preset", default="paper", choices=list(PRESETS),
                        help="SAB preset of a fresh model (default: paper)")
    parser.add_argument("--approx", default="faiss:IVF256,nprobe=16", metavar="FACTORY_STRING",
                        help="the index of the sab-mips rows")
    parser.add_argument("--run", type=Path, help="SAB rows use this trained run's model (its weights and config: "
                                                  "--preset and --k-* then apply to nothing; default: a fresh model)")
    parser.add_argument("--chunk", type=int, default=1000, help="engine chunk (steps re-run at once)")
    parser.add_argument("--audit-every", type=int, default=100, help="sab-mips: audit every n-th attention step")
    parser.add_argument("--max-gib", type=float, default=20.0, help="skip rows projected to need more memory")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="skip rows projected to take longer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/long.json"), help="JSON output file")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.T) < 2 * get_task("copy").n_digits + 1 or args.batch_size < 1 or args.chunk < 1:
        parser.error("--T must exceed 20 (the copy task's digits), --batch-size and --chunk must be >= 1")
    prepare(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args)))
        return 0
    sab = (f"SAB of run {args.run}" if args.run is not None else
           f"SAB ({args.preset}) H={args.hidden_size} k_att={args.k_att} k_trunc={args.k_trunc} k_top={args.k_top}")
    print(f"long-sequence update: B={args.batch_size}, {sab}, approx {args.approx}, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    rows: list[dict] = []
    for T in sorted(args.T):
        for model_name in args.models:
            guess = projected(rows, model_name, T)
            if guess is not None and (guess[0] > args.max_gib or guess[1] > args.max_minutes):
                rows.append({"model": model_name, "T": T, "skipped": f"not run: projected {guess[0]:.1f} GiB, "
                                                                      f"{guess[1]:.0f} min"})
            else:
                rows.append(run_child(model_name, T, args, argv))
            print(format_table(rows[-1:]).splitlines()[1], flush=True)
    print(format_table(rows))
    # with --run, the SAB rows used the run's model as configured, not the fresh-model flags in "settings"
    run_model = {"run_model": load_run(args.run)[2].to_dict()} if args.run is not None else {}
    save_rows(args, rows, **run_model)
    print(f"wrote {plot_long_sequences(rows, args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
