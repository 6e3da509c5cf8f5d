"""Benchmark: one training update on very long sequences: peak memory and milliseconds per time step.

Settings (``--help``): B=8, H=128, k_att=10, k_trunc=10, k_top=5, copy-task inputs of T steps. Rows:

* ``lstm``          the fused ``nn.LSTM`` with full BPTT;
* ``sab-plain``     SAB through plain autograd (every step's activations kept), exact retrieval;
* ``sab-engine``    SAB through the memory-bounded engine (``SABLSTM.forward_backward``), exact retrieval;
* ``sab-mips``      the engine with the approximate index ``--approx``.

Every row also reports the loss and accuracy its update computed on the copy batch: with ``--run`` (a
trained copy model) they show that the update at that length still solves the task.

**Audits are not in the update's numbers.** ``ms/step`` and ``peak GiB`` are the update alone, without
audits. A ``sab-mips`` row then measures recall@k_top and attention mass recovered against exact search in a
separate forward pass (``predict``, chunked like the engine), from the same parameters, auditing every
``--audit-every``-th attention step (0: no audit pass). It is reported apart: ``audit s`` in the table
(``audit_pass_seconds`` in the JSON; ``audit_seconds`` is its time in the exact searches) and
``peak_with_audit_gib`` (the process's peak after that pass). ``index_seconds`` is the update's time in its
index (search and add) for both engine rows.

Each row runs in a fresh child process, so its peak resident memory (``VmHWM``: ``peak_rss_gib``) is its own. A
row whose projection exceeds ``--max-gib`` or ``--max-minutes`` is reported as "not run: projected ..." instead.
Memory is projected from measured costs, a least-squares line through the model's measured rows,
``peak = fixed + per_step · T``: a row holds a fixed part (the interpreter, torch, the model and, in the
engine, one chunk's graph) and costs that grow with T (per step: inputs, logits, candidate ids; per slot, one
every k_att steps: the slot, its gradient buffer, its keys, the index's copy). Engine rows shorter than two
chunks are left out of the line, since up to a chunk the graph grows with T. When a model has no such line
yet and a row is longer than 8 chunks, two short "probe" rows (4 and 8 chunks, ``PROBE_CHUNKS``) are measured
first and kept in the table. Time is projected in proportion to T from the longest row measured, audit pass
included. Prints a table, writes JSON and a log-log plot. Never asserts.

Run: ``sab-mips bench long --T 1000 10000 100000 1000000``.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from ..devices import DEVICE_HELP, peak_rss_gib, resolve_device, synchronize
from ..model import PRESETS, PassOptions, SABConfig, build_model
from ..plots import plot_long_sequences
from ..tasks import batch_generator, get_task
from ..training import load_run
from .common import bench_command, prepare, save_rows

MODELS = ("lstm", "sab-plain", "sab-engine", "sab-mips")
ENGINE_MODELS = ("sab-engine", "sab-mips")
PROBE_CHUNKS = (4, 8)  # lengths of the probe rows, in engine chunks: past the first chunks, short to run


def measure(model_name: str, T: int, args: argparse.Namespace) -> dict:
    """One update of ``model_name`` at length T in this process: seconds, peak RSS, loss and accuracy; for
    sab-mips, then, the audits of a separate pass (``audit_pass``)."""
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
    # the audit pass must see the parameters the update saw, not those after its Adam step
    audited = copy.deepcopy(model.state_dict()) if model_name == "sab-mips" and args.audit_every else None
    synchronize(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    row = {"model": model_name, "T": T}
    if model_name in ENGINE_MODELS:
        # no audits here: their exact index and searches would be in the update's time and memory
        out = model.forward_backward(x, y, task.loss, chunk=args.chunk, chunk_loss=task.chunk_loss)
        logits = out.logits
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
    row.update(seconds=seconds, ms_per_step=1e3 * seconds / x.shape[1], peak_gib=peak_rss_gib(), base_gib=base)
    if audited is not None:
        model.load_state_dict(audited)
        row.update(audit_pass(model, x, args.chunk, args.audit_every))
    return row


def audit_pass(model: torch.nn.Module, x: torch.Tensor, chunk: int, every: int) -> dict:
    """Recall@k_top and attention mass recovered of the model's index against exact search, over every
    ``every``-th attention step of a forward pass on x (chunked, as in the engine's forward sweep), with the
    pass's seconds, its seconds in the exact searches and the process's peak RSS after it. Recall and mass
    are None, and ``audits`` says why, where nothing could be audited (e.g. an exact index)."""
    synchronize(x.device)
    start = time.perf_counter()
    stats = model.predict(x, chunk=chunk, options=PassOptions(audit_every=every)).stats
    synchronize(x.device)
    seconds = time.perf_counter() - start
    metrics = stats.as_metrics()
    return {"recall": metrics.get("recall"), "mass_recovered": metrics.get("mass_recovered"), "audits": stats.audits,
            "audit_pass_seconds": seconds, "audit_seconds": metrics["audit_seconds"],
            "peak_with_audit_gib": peak_rss_gib()}


def run_child(model_name: str, T: int, args: argparse.Namespace, argv: list[str]) -> dict:
    """``measure`` in a fresh process (its own peak memory); a crash or a kill is reported in the row."""
    command = [sys.executable, "-m", "sab_mips", "bench", "long", *argv, "--child", model_name, str(T)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": model_name, "T": T, "failed": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


class Projection(NamedTuple):
    """What a row at some T is projected to take: peak GiB (None without a line for memory: ``memory_line``),
    minutes, and the line's fixed GiB and KiB per step."""

    gib: float | None
    minutes: float
    fixed_gib: float | None = None
    per_step_kib: float | None = None


def fit_from(model_name: str, chunk: int) -> int:
    """The shortest T whose peak memory lies on the line: two chunks for the engine rows (up to a chunk, the
    graph the engine re-runs grows with T), any T for the others."""
    return 2 * chunk if model_name in ENGINE_MODELS else 0


def memory_line(rows: list[dict], model_name: str, min_T: int = 0) -> tuple[float, float] | None:
    """(fixed GiB, GiB per step): the least-squares line ``peak_gib = fixed + per_step · T`` through this
    model's measured rows at T >= min_T; None without two different T there."""
    points = [(r["T"], r["peak_gib"]) for r in rows if r["model"] == model_name and "peak_gib" in r and r["T"] >= min_T]
    if len({T for T, _ in points}) < 2:
        return None
    mean_T = sum(T for T, _ in points) / len(points)
    mean_gib = sum(g for _, g in points) / len(points)
    slope = (sum((T - mean_T) * (g - mean_gib) for T, g in points)
             / sum((T - mean_T) ** 2 for T, _ in points))
    if slope <= 0:  # noise in RSS between close rows; memory does not shrink with T
        return max(g for _, g in points), 0.0
    return mean_gib - slope * mean_T, slope


def projected(rows: list[dict], model_name: str, T: int, min_T: int = 0) -> Projection | None:
    """This model's row at T, projected from its measured rows (None without any): memory on the
    ``memory_line`` through rows at T >= min_T (never below the largest peak measured), time in proportion
    to T from the longest row, its audit pass included."""
    done = [r for r in rows if r["model"] == model_name and "seconds" in r]
    if not done:
        return None
    last = max(done, key=lambda r: r["T"])
    minutes = (last["seconds"] + last.get("audit_pass_seconds", 0.0)) * T / last["T"] / 60
    line = memory_line(rows, model_name, min_T)
    if line is None:
        return Projection(None, minutes)
    fixed, per_step = line
    gib = max(fixed + per_step * T, max(r["peak_gib"] for r in done))
    return Projection(gib, minutes, fixed, per_step * 2**20)


def probes_needed(rows: list[dict], model_name: str, T: int, chunk: int) -> list[int]:
    """The probe lengths to measure before a row at T: none when the row is itself short (no longer than
    the longest probe) or memory can already be projected, else those not measured yet."""
    if T <= PROBE_CHUNKS[-1] * chunk or memory_line(rows, model_name, fit_from(model_name, chunk)) is not None:
        return []
    measured = {r["T"] for r in rows if r["model"] == model_name and "seconds" in r}
    shortest = 2 * get_task("copy").n_digits + 1  # the copy task's digits and their answer need 21 steps
    return sorted({max(n * chunk, shortest) for n in PROBE_CHUNKS} - measured)


def skipped_row(model_name: str, T: int, guess: Projection) -> dict:
    memory = "memory unknown" if guess.gib is None else (
        f"{guess.gib:.1f} GiB ({guess.fixed_gib:.2f} + {guess.per_step_kib:.2f} KiB per step)")
    return {"model": model_name, "T": T, "skipped": f"not run: projected {memory}, {guess.minutes:.0f} min",
            "projected_gib": guess.gib, "projected_minutes": guess.minutes}


def rows_at(T: int, model_name: str, rows: list[dict], args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """The rows that the row of ``model_name`` at T adds: probes first if it needs them, then the row,
    measured, or skipped where its projection passes ``--max-gib`` or ``--max-minutes``."""
    new = [{**run_child(model_name, P, args, argv), "probe": True}
           for P in probes_needed(rows, model_name, T, args.chunk)]
    guess = projected(rows + new, model_name, T, fit_from(model_name, args.chunk))
    too_big = guess is not None and guess.gib is not None and guess.gib > args.max_gib
    if too_big or (guess is not None and guess.minutes > args.max_minutes):
        return [*new, skipped_row(model_name, T, guess)]
    return [*new, run_child(model_name, T, args, argv)]


def cell(row: dict, key: str, spec: str) -> str:
    """A measured value formatted, or "–" where none was measured (never a made-up one)."""
    return "–" if row.get(key) is None else format(row[key], spec)


TABLE_NOTE = ("ms/step and peak GiB: the update alone. recall: a separate audited forward pass of the sab-mips "
              "rows after it, 'audit s' long, in neither ms/step nor peak GiB (its peak: peak_with_audit_gib).")


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':11s} {'T':>8s} {'ms/step':>9s} {'peak GiB':>9s} {'recall':>7s} {'audit s':>8s} "
             f"{'accuracy':>8s}  note"]
    for r in rows:
        note = r.get("skipped") or r.get("failed") or ("probe for the projection" if r.get("probe") else "")
        lines.append(f"{r['model']:11s} {r['T']:8d} {cell(r, 'ms_per_step', '.3f'):>9s} "
                     f"{cell(r, 'peak_gib', '.2f'):>9s} {cell(r, 'recall', '.4f'):>7s} "
                     f"{cell(r, 'audit_pass_seconds', '.1f'):>8s} {cell(r, 'accuracy', '.4f'):>8s}  {note}".rstrip())
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
    parser.add_argument("--audit-every", type=int, default=100,
                        help="sab-mips: audit every n-th attention step, in a pass apart from the timed update "
                             "(0: no audit pass)")
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
    if args.audit_every < 0:
        parser.error("--audit-every must be >= 0 (0: no audit pass)")
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
            new = rows_at(T, model_name, rows, args, argv)
            rows.extend(new)
            print("\n".join(format_table(new).splitlines()[1:]), flush=True)
    print(format_table(rows))
    print(TABLE_NOTE)
    # with --run, the SAB rows used the run's model as configured, not the fresh-model flags in "settings"
    run_model = {"run_model": load_run(args.run)[2].to_dict()} if args.run is not None else {}
    save_rows(args, rows, bench_command("long", argv), **run_model)
    print(f"wrote {plot_long_sequences(rows, args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
