"""``sab-mips tune``: sweep one backend's parameters on recorded memories; frontier and recommendation.

The grid (``--grid efSearch=16,32,64`` repeated, or ``--grid-file`` holding {"efSearch": [16, 32]}) ranges
over the backend's factory parameters, the number in its FAISS descriptor (``nlist`` of ``IVF<nlist>``,
``M`` of ``HNSW<M>``) and ``k_cand``, the candidates retrieved per query. Each setting is searched on S
sequences of N slots sampled from ``--memories`` (an .npz written by ``sab-mips train --record-memories``),
with the recorded queries, and measured by recall@k_top against exact search (the approximate top-K being
the K best of its k_cand candidates by exact score, as in the model; a slot tied with the exact K-th score
counts, as in ``audit``) and by search time per query. Settings
that differ only in search-time parameters share one build. Printed: every setting, the recall-versus-time
Pareto frontier and the cheapest setting with recall >= ``--target-recall``; written: tune.json, tune.png.

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
import itertools
import json
import re
from pathlib import Path
from typing import Any

from .errors import UserError

DESCRIPTOR_KEYS = {"IVF": "nlist", "HNSW": "M"}  # the number in a FAISS descriptor, tunable by name


def configure_parser(parser: argparse.ArgumentParser) -> None:
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


def settings(backend: str, grid: dict[str, list[int | float]], k_top: int) -> list[tuple[str, int]]:
    """Every (factory string, k_cand) of the grid; unknown keys and invalid values are refused."""
    from indexes import make_index
    from indexes.factory import parse_factory_string

    name, positionals, params = parse_factory_string(backend)
    base = make_index(backend)  # the backend's own error for a bad string
    descriptor_key = None
    match = re.fullmatch(r"(IVF|HNSW)(\d+)", positionals[0]) if positionals else None
    if match:
        descriptor_key = DESCRIPTOR_KEYS[match.group(1)]
    valid = [*base.params, "k_cand", *([descriptor_key] if descriptor_key else [])]
    unknown = sorted(set(grid) - set(valid))
    if unknown:
        raise UserError(f"unknown grid parameter(s) {', '.join(unknown)} for index '{base}'; "
                        f"valid: {', '.join(valid)}")
    for key in [k for k in grid if k in ("k_cand", descriptor_key)]:
        if not all(isinstance(v, int) and v >= 1 for v in grid[key]):
            raise UserError(f"--grid {key}: values must be integers >= 1, got {grid[key]}")
    if "k_cand" in grid and min(grid["k_cand"]) < k_top + 1:
        raise UserError(f"--grid k_cand: values must be >= k_top+1 = {k_top + 1}, got {grid['k_cand']}")
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        k_cand = int(point.pop("k_cand", k_top + 1))
        descriptor = positionals[:]
        if descriptor_key in point:
            descriptor[0] = f"{match.group(1)}{point.pop(descriptor_key)}"
        args = descriptor + [f"{k}={v}" for k, v in {**params, **point}.items()]
        spec = name + (":" + ",".join(args) if args else "")
        make_index(spec)  # validates every value now, before any timing starts
        out.append((spec, k_cand))
    return out


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (lower time, higher recall), fastest first."""
    frontier: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r["ms_per_query"], -r["recall"])):
        if not frontier or row["recall"] > frontier[-1]["recall"]:
            frontier.append(row)
    return frontier


def recommend(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The fastest row reaching ``target`` recall (None if none does)."""
    good = [r for r in rows if r["recall"] >= target]
    return min(good, key=lambda r: r["ms_per_query"]) if good else None


def _search_scores(index, queries, s: int, k: int):
    """Exact scores (Q, k) of the results, best first (-inf pads); query i goes to sequence i mod s."""
    import torch

    return torch.cat([index.search(queries[j : j + s], k)[0] for j in range(0, queries.shape[0], s)])


def score_recall(approx, exact) -> float:
    """Mean over queries of |approx top-K reaching the exact K-th score| / K; approx, exact: (Q, K) scores."""
    from .audit import TIE_RTOL

    kth = exact[:, -1:]
    hits = (approx >= kth - TIE_RTOL * kth.abs()).sum(dim=1).clamp(max=exact.shape[1])
    return float(hits.double().mean()) / exact.shape[1]


def measure(points: list[tuple[str, int]], memories: str, k_top: int, n: int, sequences: int, n_queries: int,
            repeats: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Recall@k_top and search time per query of every (spec, k_cand); and the exact baseline."""
    from benchmarks.datasets import load_memories, make_dataset
    from benchmarks.retrieval import build_key, time_search, timed
    from indexes import make_index

    try:
        pools = load_memories(memories)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read --memories {memories}: {exc}") from None
    S = sequences
    Q = -(-n_queries // S) * S
    keys, queries, note = make_dataset("memories", S, n, pools[0].shape[1], Q, seed, pools)
    exact = make_index("exact")
    exact.reset(S, keys.shape[2])
    exact.add(keys)
    exact_seconds, _ = time_search(exact, queries, S, k_top, repeats)
    truth = _search_scores(exact, queries, S, k_top)
    baseline = {"ms_per_query": 1e3 * exact_seconds / Q, "note": note, "S": S, "N": n, "Q": Q}
    rows, built = [], {}
    for spec, k_cand in points:
        index = make_index(spec)
        key = build_key(index)
        if key not in built:
            index.reset(S, keys.shape[2])
            build_seconds, _ = timed(lambda: (index.add(keys), index.flush()))
            built[key] = (index, build_seconds)
        shared, build_seconds = built[key]
        if index.search_params():
            shared.set_params(**index.search_params())
        seconds, _ = time_search(shared, queries, S, k_cand, repeats)
        found = _search_scores(shared, queries, S, k_cand)[:, :k_top]
        rows.append({"retrieval": spec, "k_cand": k_cand, "recall": score_recall(found, truth),
                     "ms_per_query": 1e3 * seconds / Q, "build_s": build_seconds,
                     "time_vs_exact": seconds / exact_seconds if exact_seconds > 0 else float("inf")})
    return rows, baseline


def live_runs(points: list[tuple[str, int]], rows: list[dict[str, Any]], config: str, steps: int, out: Path) -> None:
    """Train ``steps`` updates per setting (every attention step audited); add live_* columns to ``rows``."""
    import statistics

    from .checkpoint import CHECKPOINT_FILE, METRICS_FILE, read_metrics
    from .cli import _read_json, _split_config
    from .compare import slug
    from .config import SABConfig, TrainConfig
    from .train import train

    model_values, train_values = _split_config(_read_json(config, "--live-config file"), config)
    train_cfg = TrainConfig.from_dict({**train_values, "steps": steps, "audit_every": 1, "grad_cosine_every": 0})
    for (spec, k_cand), row in zip(points, rows):
        model_cfg = SABConfig.from_dict({**model_values, "model": "sab", "retrieval": spec, "k_cand": k_cand})
        run_dir = out / "live" / f"{slug(spec)}-k_cand={k_cand}"
        train(model_cfg, train_cfg, run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file(), progress=False)
        lines = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("split") == "train"]
        recalls = [r["recall"] for r in lines if "recall" in r]
        row["live_recall"] = statistics.fmean(recalls) if recalls else 1.0
        row["live_sec_per_update"] = statistics.median(r["sec_per_update"] for r in lines)


def _plot(rows: list[dict[str, Any]], frontier: list[dict[str, Any]], best: dict[str, Any] | None,
          baseline: dict[str, Any], target: float, title: str, path: Path) -> Path:
    from .plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["ms_per_query"] for r in rows], [r["recall"] for r in rows], s=14, color="0.6", label="settings")
    ax.plot([r["ms_per_query"] for r in frontier], [r["recall"] for r in frontier], "o-", color="C0", label="Pareto frontier")
    ax.axhline(target, color="C3", lw=0.8, ls="--", label=f"target recall {target}")
    ax.axvline(baseline["ms_per_query"], color="k", lw=0.8, ls=":", label="exact search")
    if best is not None:
        ax.plot([best["ms_per_query"]], [best["recall"]], "*", ms=14, color="C1", label="recommended")
    ax.set(xscale="log", xlabel="search time per query (ms)", ylabel="recall@k_top", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _row(r: dict[str, Any]) -> str:
    live = (f" | live: recall={r['live_recall']:.3f} {r['live_sec_per_update']:.3f} s/update"
            if "live_recall" in r else "")
    return (f"{r['retrieval']:<52} k_cand={r['k_cand']:<4} recall={r['recall']:.3f} "
            f"{r['ms_per_query']:.4f} ms/query ({r['time_vs_exact']:.2f}x exact's time) build {r['build_s']:.2f}s{live}")


def run_tune(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write_text

    if args.live_steps < 0 or bool(args.live_steps) != bool(args.live_config):
        raise UserError("live runs need both --live-config FILE and --live-steps N >= 1")
    for name in ("k_top", "n", "sequences", "queries", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    from_file = None
    if args.grid_file:
        try:
            from_file = json.loads(Path(args.grid_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read --grid-file {args.grid_file}: {exc}") from None
        if not isinstance(from_file, dict):
            raise UserError(f"--grid-file {args.grid_file} must hold a JSON object {{\"key\": [values]}}")
    points = settings(args.backend, parse_grid(args.grid, from_file), args.k_top)
    if not Path(args.memories).is_file():
        raise UserError(f"--memories {args.memories} does not exist")
    rows, baseline = measure(points, args.memories, args.k_top, args.n, args.sequences, args.queries,
                             args.repeats, args.seed)
    out = Path(args.out)
    if args.live_steps:
        live_runs(points, rows, args.live_config, args.live_steps, out)
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
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2) + "\n")
    title = f"{args.backend} on {Path(args.memories).name}, N={args.n}, K={args.k_top}"
    print(f"wrote {out / 'tune.json'}, {_plot(rows, frontier, best, baseline, args.target_recall, title, out / 'tune.png')}")
    return 0
