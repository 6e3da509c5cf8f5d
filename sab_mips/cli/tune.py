"""``sab-mips tune``: sweep one backend's parameters on recorded memories; frontier and recommendation.

The grid (``--grid efSearch=16,32,64`` repeated, or ``--grid-file`` holding {"efSearch": [16, 32]}) ranges
over the backend's factory parameters, the number in its FAISS descriptor (``nlist`` of ``IVF<nlist>``,
``M`` of ``HNSW<M>``) and ``k_cand``, the candidates retrieved per query. Each setting is searched on S
sequences of N slots sampled from ``--memories`` (an .npz written by ``sab-mips train --record-memories``),
with the recorded queries, and measured by recall@k_top against exact search (the approximate top-K being
the K best of its k_cand candidates by exact score, as in the model; a slot tied with the exact K-th score
counts, as in the model's audits: ``sab_mips.retrieval.metrics``) and by search time per query. Settings
that differ only in search-time parameters share one build (``sab_mips.offline_retrieval.tuning``).
Printed: every setting, the recall-versus-time Pareto frontier and the cheapest setting with recall >=
``--target-recall``; written: tune.json, tune.png.

Optionally (``--live-config FILE --live-steps N``) every setting also trains a short SAB run with the
shared loop (config as for ``train --config``; retrieval and k_cand set by the grid; every attention step
audited) in ``OUT/live/``, and its rows gain the recall and seconds per update measured during training.

Shapes: S sequences, N slots per sequence, d slot size, Q queries (query i goes to sequence i mod S),
K = k_top.

Example::

    $ sab-mips tune --backend "faiss:HNSW32,exact_below=0" --memories mem.npz --grid efSearch=16,32,64,128 \\
          --grid k_cand=6,12 --k-top 5 --target-recall 0.95 --out reports/tune-hnsw
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from ..devices import DEVICE_HELP
from ..errors import UserError
from ..io import read_json, write_json
from ..plots import plot_tuning
from ..offline_retrieval.tuning import measure, pareto, recommend, settings
from ..training import train
from ..training.rundir import CHECKPOINT_FILE, METRICS_FILE, read_metrics
from ..training.summary import slug
from .flags import merge_configs

HELP = "sweep index parameters on recorded memories: recall-vs-time frontier, recommendation"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", required=True, metavar="FACTORY_STRING",
                        help="index to tune, e.g. faiss:HNSW32,exact_below=0 or alsh:m=3 (grid values override it)")
    parser.add_argument("--memories", required=True, metavar="FILE", help=".npz from train --record-memories")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="values of one parameter (repeatable); keys: the backend's parameters, k_cand, "
                             "and nlist / M for faiss IVF / HNSW")
    parser.add_argument("--grid-file", metavar="FILE", help='JSON object {"key": [values], ...}, added to --grid')
    parser.add_argument("--k-top", type=int, default=5, help="K of recall@K (default 5)")
    parser.add_argument("--n", type=int, default=1000, help="slots per sequence (default 1000)")
    parser.add_argument("--sequences", type=int, default=8, help="sequences S (default 8)")
    parser.add_argument("--queries", type=int, default=64, help="queries, rounded up to a multiple of S (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per setting, median (default 3)")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall to reach (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for tune.json and tune.png")
    parser.add_argument("--live-config", metavar="FILE", help="JSON config of short live training runs (as for train)")
    parser.add_argument("--live-steps", type=int, default=0, metavar="N", help="updates per live run (0: none)")
    parser.add_argument("--device", default="auto", help=f"where the live runs compute: {DEVICE_HELP} (default: auto)")


def _number(key: str, text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"--grid {key}: {text!r} is not a number") from None


def parse_grid(items: list[str], from_file: dict[str, Any] | None = None) -> dict[str, list[int | float]]:
    """{key: values} from ``KEY=V1,V2`` strings and an optional JSON object; values must be numbers."""
    grid: dict[str, list[int | float]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not texts:
            raise UserError(f"--grid {key}: empty list of values")
        grid[key] = [_number(key, v) for v in texts]
    for key, values in (from_file or {}).items():
        if not isinstance(values, list) or not values:
            raise UserError(f"--grid-file {key}: expected a non-empty list of numbers, got {values!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise UserError(f"--grid-file {key}: values must be numbers, got {values!r}")
        grid[key] = list(values)
    if not grid:
        raise UserError("nothing to sweep: give at least one --grid KEY=V1,V2,... or --grid-file")
    return grid


def live_runs(points: list[tuple[str, int]], rows: list[dict[str, Any]], config: str, steps: int, out: Path,
              device: str = "auto") -> None:
    """Train ``steps`` updates per setting (every attention step audited); add live_* columns to ``rows``."""
    for (spec, k_cand), row in zip(points, rows):
        # the config file as ``train --config`` reads it (task-sized fields, validation), this setting on top
        model_cfg, train_cfg = merge_configs({"model": "sab", "retrieval": spec, "k_cand": k_cand},
                                             {"steps": steps, "audit_every": 1, "grad_cosine_every": 0}, config)
        run_dir = out / "live" / f"{slug(spec)}-k_cand={k_cand}"
        train(model_cfg, train_cfg, run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file(), progress=False, device=device)
        lines = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("split") == "train"]
        recalls = [r["recall"] for r in lines if "recall" in r]
        # None where nothing was audited (an exact index is not): a missing recall is not a perfect one
        row["live_recall"] = statistics.fmean(recalls) if recalls else None
        row["live_sec_per_update"] = statistics.median(r["sec_per_update"] for r in lines)


def _row(r: dict[str, Any]) -> str:
    recall = "–" if r.get("live_recall") is None else f"{r['live_recall']:.3f}"
    live = f" | live: recall={recall} {r['live_sec_per_update']:.3f} s/update" if "live_sec_per_update" in r else ""
    return (f"{r['retrieval']:<52} k_cand={r['k_cand']:<4} recall={r['recall']:.3f} "
            f"{r['ms_per_query']:.4f} ms/query ({r['time_vs_exact']:.2f}x exact's time) build {r['build_s']:.2f}s{live}")


def run(args: argparse.Namespace) -> int:
    if args.live_steps < 0 or bool(args.live_steps) != bool(args.live_config):
        raise UserError("live runs need both --live-config FILE and --live-steps N >= 1")
    for name in ("k_top", "n", "sequences", "queries", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    from_file = read_json(args.grid_file, "--grid-file") if args.grid_file else None
    points = settings(args.backend, parse_grid(args.grid, from_file), args.k_top)
    if not Path(args.memories).is_file():
        raise UserError(f"--memories {args.memories} does not exist")
    rows, baseline = measure(points, args.memories, args.k_top, args.n, args.sequences, args.queries,
                             args.repeats, args.seed)
    out = Path(args.out)
    if args.live_steps:
        live_runs(points, rows, args.live_config, args.live_steps, out, args.device)
    frontier, best = pareto(rows), recommend(rows, args.target_recall)
    print(f"exact: {baseline['ms_per_query']:.4f} ms/query; S={baseline['S']} sequences of N={args.n} slots, "
          f"Q={baseline['Q']} queries ({baseline['note']})")
    print("all settings:\n  " + "\n  ".join(_row(r) for r in rows))
    print("Pareto frontier (recall vs time):\n  " + "\n  ".join(_row(r) for r in frontier))
    if best is None:
        top = max(rows, key=lambda r: r["recall"])
        print(f"no setting reaches recall {args.target_recall}; best recall: {_row(top)}")
    else:
        print(f"recommended (cheapest with recall >= {args.target_recall}): {best['retrieval']} "
              f"with k_cand={best['k_cand']}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"backend": args.backend, "k_top": args.k_top, "target_recall": args.target_recall,
              "exact": baseline, "rows": rows, "frontier": frontier, "recommended": best}
    write_json(out / "tune.json", result)
    title = f"{args.backend} on {Path(args.memories).name}, N={args.n}, K={args.k_top}"
    print(f"wrote {out / 'tune.json'}, {plot_tuning(rows, frontier, best, baseline, args.target_recall, title, out / 'tune.png')}")
    return 0
