"""Benchmark: recall@k and speed of every index backend against exact search, in the same process.

Shapes: B=32 queries, S sequences built, N slots per sequence, d=128, k=8.

For each data set (``sab_mips.offline_retrieval.datasets``: gaussian, clustered, memories) and N in
``--sizes``:

* build the indexes over S = min(B, 2^floor(log2(max_keys / N))) sequences (all B=32 at N=10³, fewer
  at large N to bound memory and build time) and ask B queries, query i going to sequence i mod S,
  as B/S batched searches of S queries;
* report recall@k against exact search, time per search of all B queries (median of ``--repeats``), its
  ratio to exact's, build time (``add`` + ``flush``), ``nbytes()``, and LSH candidates per query;
* fit, per LSH index, the exponent of candidates ~ N^alpha (least squares on log-log over the sizes).

Indexes that differ only in search-time parameters share one build (``set_params``). A calling-pattern
section measures the model's use: B=64 sequences at N=1000, one search per step and one added slot every
4 steps, time per step against exact (and at N=16, where only the per-call overhead is left).
Outputs: a printed table, ``retrieval.json`` and one recall-versus-time plot per data set in ``--out``,
written atomically. Timings on a shared machine are noisy. Never asserts.

Run: ``sab-mips bench retrieval`` (``--help`` lists the options).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

from indexes import make_index

from ..devices import DEVICE_HELP, resolve_device, synchronize
from ..plots import plot_recall_vs_time
from ..offline_retrieval.datasets import DATASETS, load_memories, make_dataset
from ..retrieval.metrics import recall_at_k, score_scale
from ..offline_retrieval.timing import build_key, time_search, timed
from .common import bench_command, prepare, write_record

DEFAULT_INDEXES = [
    "faiss:Flat",
    "faiss:HNSW32,efSearch=64",
    "faiss:HNSW32,efSearch=256",
    "faiss:HNSW32,efSearch=64,mips=l2",
    "faiss:HNSW32,efSearch=256,mips=l2",
    "faiss:IVF256,nprobe=4",
    "faiss:IVF256,nprobe=16",
    "alsh:m=3,U=0.83,r=2.5,K=8,L=16",
    "alsh:m=3,U=0.83,r=2.5,K=10,L=32,probes=1",
    "alsh:m=3,U=0.83,r=2.5,K=6,L=32,probes=1,bucket=16",
    "simple-lsh:bits=16,tables=8",
    "simple-lsh:bits=10,tables=32,probes=2",
    "simple-lsh:bits=8,tables=32,probes=2,bucket=8",
]
PATTERN_INDEXES = [
    "faiss:Flat",
    "faiss:HNSW32,efSearch=64",
    "faiss:HNSW32,efSearch=64,exact_below=0",
    "faiss:IVF16,nprobe=4",
    "alsh:m=3,U=0.83,r=2.5,K=8,L=16",
    "simple-lsh:bits=16,tables=8",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sab-mips bench retrieval", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], default=[1000, 10000, 100000],
                   help="slots per sequence, comma-separated (default 1e3,1e4,1e5)")
    p.add_argument("--huge", action="store_true", help="also run N=10^6")
    p.add_argument("--indexes", nargs="+", default=DEFAULT_INDEXES, help="factory strings (exact is always run)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--memories", type=Path, help=".npz with keys (M, d) and queries (Q, d) from --record-memories")
    p.add_argument("--dim", type=int, default=128, help="key dimension of the synthetic data sets")
    p.add_argument("--queries", type=int, default=32, help="B, queries per search")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-keys", type=int, default=131072,
                   help="keys built per index at most (fewer sequences at large N)")
    p.add_argument("--repeats", type=int, default=5, help="timed searches (median)")
    p.add_argument("--pattern-indexes", nargs="*", default=PATTERN_INDEXES,
                   help="indexes for the calling-pattern section (B=64, N=1000); none to skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help=f"where keys and queries live: {DEVICE_HELP} (default: cpu; "
                                                    f"faiss-gpu indexes need cuda)")
    p.add_argument("--out", type=Path, default=Path("bench-results/retrieval"))
    return p.parse_args(argv)


def sequences_for(n: int, batch: int, max_keys: int) -> int:
    """Largest power of two S <= batch with S·n <= max_keys (at least 1); S divides batch when it is 2^j."""
    s = 1
    while 2 * s <= batch and 2 * s * n <= max_keys and batch % (2 * s) == 0:
        s *= 2
    return s


def run_size(dataset: str, n: int, args: argparse.Namespace, memories) -> list[dict]:
    B, k = args.queries, args.k
    s = sequences_for(n, B, args.max_keys)
    dim = memories[0].shape[1] if dataset == "memories" else args.dim
    keys, queries, note = make_dataset(dataset, s, n, dim, B, args.seed + n, memories)
    device = resolve_device(args.device)
    keys, queries = keys.to(device), queries.to(device)
    scale = score_scale(queries, keys)  # the scale of the scores' rounding, for recall's ties
    rows, built = [], {}
    reference = None
    for spec in ["exact", *args.indexes]:
        index = make_index(spec)
        reason = index.unavailable_reason()
        base = dict(dataset=dataset, N=n, sequences=s, queries=B, k=k, index=str(index), note=note)
        if reason is not None:
            rows.append({**base, "skipped": reason})
            continue
        key = build_key(index)
        shared = key in built
        if shared:
            cached, build_s = built[key]
            cached.set_params(**index.search_params())
            index = cached
        else:
            index.reset(s, dim)
            build_s, _ = timed(lambda: (index.add(keys), index.flush()))
            built[key] = (index, build_s)
        search_s, (scores, _) = time_search(index, queries, s, k, args.repeats)
        if reference is None:
            reference = dict(scores=scores, search_s=search_s)
        stats = index.stats()
        recall = float(recall_at_k(scores, reference["scores"], scale).double().mean())
        row = {**base, "recall": recall, "search_ms": 1e3 * search_s,
               "ratio": search_s / reference["search_s"], "build_s": build_s, "nbytes": index.nbytes(),
               "shared_build": shared}
        if "candidates_per_query" in stats:
            row["candidates"] = stats["candidates_per_query_mean"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    if "skipped" in r:
        return f"{r['dataset']:<9} {r['N']:>7} {r['sequences']:>3}  {r['index']:<48} skipped: {r['skipped']}"
    cand = f"{r['candidates']:>9.0f}" if "candidates" in r else " " * 9
    build = "  (shared)" if r["shared_build"] else f"{r['build_s']:>10.2f}"
    return (f"{r['dataset']:<9} {r['N']:>7} {r['sequences']:>3}  {r['index']:<48} {r['recall']:>6.3f} "
            f"{r['search_ms']:>9.2f} {r['ratio']:>6.2f} {build} {r['nbytes'] / 2**20:>8.1f} {cand}")


HEADER = (f"{'data':<9} {'N':>7} {'S':>3}  {'index':<48} {'rec@k':>6} {'search ms':>9} {'/exact':>6} "
          f"{'build s':>10} {'MB':>8} {'cand/q':>9}")


def exponents(rows: list[dict]) -> list[dict]:
    """Least-squares slope of log(candidates) against log(N), per data set and LSH index."""
    out = []
    for dataset, index in sorted({(r["dataset"], r["index"]) for r in rows if "candidates" in r}):
        pts = [(math.log(r["N"]), math.log(max(r["candidates"], 1e-9))) for r in rows
               if r["dataset"] == dataset and r["index"] == index and "candidates" in r]
        if len(pts) < 2:
            continue
        mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        out.append(dict(dataset=dataset, index=index, exponent=slope, sizes=[round(math.exp(x)) for x, _ in pts]))
    return out


def calling_pattern(specs: list[str], seed: int, n: int, steps: int = 40, device: str = "cpu") -> list[dict]:
    """Time per model step at B=64, N=n, d=128: a search every step, one new slot every 4 steps.

    At n=1000 (the step benchmark's setting) this is the cost in use; at n=16 the searches are nearly free, so
    what remains is the per-call overhead (Python, B native calls, conversions)."""
    B, d, k = 64, 128, 8
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(B, n + steps, d, generator=g).to(resolve_device(device))
    queries = torch.randn(steps, B, d, generator=g).to(keys.device)
    rows, exact_s = [], None
    for spec in ["exact", *specs]:
        index = make_index(spec)
        if index.unavailable_reason() is not None:
            continue
        index.reset(B, d)
        index.add(keys[:, :n])
        index.search(queries[0], k)

        def loop() -> None:
            for t in range(steps):
                if t % 4 == 0:
                    index.add(keys[:, n + t : n + t + 1])
                index.search(queries[t], k)

        per_step = timed(lambda: (loop(), synchronize(keys.device)))[0] / steps
        exact_s = exact_s or per_step
        rows.append(dict(index=str(index), N=n, step_ms=1e3 * per_step, ratio=per_step / exact_s))
        print(f"pattern  B=64 N={n:<5} {str(index):<64} {1e3 * per_step:>8.2f} ms/step {per_step / exact_s:>6.2f}x")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    prepare(None)
    sizes = args.sizes + ([1_000_000] if args.huge and 1_000_000 not in args.sizes else [])
    memories = None
    datasets = list(args.datasets)
    if "memories" in datasets:
        if args.memories is None:
            print("note: no --memories FILE given; skipping the real-memories data set")
            datasets.remove("memories")
        else:
            memories = load_memories(args.memories)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f"; timings are noisy on a shared machine")
    pattern = []
    for n in (16, 1000) if args.pattern_indexes else ():
        pattern.extend(calling_pattern(args.pattern_indexes, args.seed, n, device=args.device))
    print(HEADER)
    rows = []
    for dataset in datasets:
        for n in sizes:
            rows.extend(run_size(dataset, n, args, memories))
    fits = exponents(rows)
    for f in fits:
        print(f"candidates ~ N^{f['exponent']:.2f}  {f['dataset']:<9} {f['index']}  (N = {f['sizes']})")
    result = dict(benchmark="retrieval", sizes=sizes, datasets=datasets,
                  memories=str(args.memories) if args.memories else None,
                  rows=rows, candidate_exponents=fits, calling_pattern=pattern)
    out = args.out
    write_record(out / "retrieval.json", bench_command("retrieval", argv), result)
    for dataset in datasets:
        plot_recall_vs_time(rows, dataset, out / f"recall_vs_time_{dataset}.png")
    print(f"wrote {out / 'retrieval.json'} and {len(datasets)} plot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
