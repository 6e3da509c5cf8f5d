"""Replay a recorded SAB memory against indexes, in the order the model writes and searches it.

``sab-mips train --record-memories FILE --batch-size 1 --record-count N`` with N at most the slots of one
sequence saves that sequence's keys (slot i written at step (i + 1)·k_att − 1) and the query of every
attention step (the model attends at every step once a slot exists: query j belongs to step j + k_att).
``sab-mips tune`` searches the whole memory at once; this script asks what the model asks: each query
searches only the slots written before its step.

* **recall**: ``--queries`` queries drawn at random (after the first ``--skip``); for each, the keys
  written since the previous one are added and the query searched for k_top + 1 candidates. Recall@k_top
  counts ties with the exact k-th score as hits (``sab_mips.retrieval.metrics``). Time per search
  includes what a lazy index builds at that search.
* **pattern**: the model's calling pattern, B copies of the sequence: N slots, then ``--steps`` steps of
  one search each and one add every k_att steps; ms per step of each index and its ratio to exact search,
  all indexes interleaved step by step in one process.

Prints two tables and writes JSON. Example::

    python experiments/replay_memory.py --memories mem-T1e5.npz --k-att 5 \\
        --indexes "faiss:IVF64,nprobe=16" "dedup:tol=1e-6" --out replay.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from indexes import make_index
from sab_mips.retrieval.metrics import recall_at_k, score_scale


def replay_recall(keys: torch.Tensor, queries: torch.Tensor, spec: str, k_att: int, k: int, steps: list[int]) -> dict:
    index, exact = make_index(spec), make_index("exact")
    for i in (index, exact):
        i.reset(1, keys.shape[1])
    held, recalls, seconds = 0, [], 0.0
    for t in steps:
        # query j is asked at step j + k_att (attention starts with the first slot, written at step k_att - 1);
        # it searches the slots written before that step, at steps k_att - 1, 2 k_att - 1, ...
        written = min((t + k_att) // k_att, keys.shape[0])
        if written > held:
            index.add(keys[None, held:written])
            exact.add(keys[None, held:written])
            held = written
        query = queries[t : t + 1]
        start = time.perf_counter()
        scores, _ = index.search(query, k + 1)
        seconds += time.perf_counter() - start
        truth, _ = exact.search(query, k)
        recalls.append(float(recall_at_k(scores[:, :k], truth, score_scale(query, exact.keys))))
    return {"index": spec, "recall": float(np.mean(recalls)), "recall_min": float(np.min(recalls)),
            "ms_per_search": 1e3 * seconds / len(steps)}


def calling_pattern(keys: torch.Tensor, queries: torch.Tensor, specs: list[str], k_att: int, k: int,
                    batch_size: int, n: int, steps: int) -> list[dict]:
    stored = keys[:n].expand(batch_size, -1, -1).contiguous()  # (B, N, d)
    later = keys[n : n + steps // k_att + 1].expand(batch_size, -1, -1).contiguous()
    indexes = {spec: make_index(spec) for spec in ["exact", *specs]}
    for index in indexes.values():
        index.reset(batch_size, keys.shape[1])
        index.add(stored)
        index.trust_inputs()
    seconds = dict.fromkeys(indexes, 0.0)
    for step in range(steps):
        query = queries[step * batch_size : (step + 1) * batch_size]
        for spec, index in indexes.items():
            start = time.perf_counter()
            if step % k_att == k_att - 1:
                index.add(later[:, step // k_att : step // k_att + 1])
            index.search(query, k + 1)
            seconds[spec] += time.perf_counter() - start
    return [{"index": spec, "B": batch_size, "N": n, "ms_per_step": 1e3 * s / steps,
             "ratio_to_exact": s / seconds["exact"]} for spec, s in seconds.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", required=True, help=".npz from sab-mips train --record-memories (batch size 1)")
    parser.add_argument("--indexes", nargs="+", required=True, metavar="FACTORY_STRING")
    parser.add_argument("--k-att", type=int, required=True, help="the model's k_att (a slot every k_att steps)")
    parser.add_argument("--k-top", type=int, default=5)
    parser.add_argument("--queries", type=int, default=400, help="steps replayed for recall (default 400)")
    parser.add_argument("--skip", type=int, default=5000, help="first steps not drawn (default 5000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8], help="B of the calling pattern")
    parser.add_argument("--n", type=int, default=19000, help="slots held in the calling pattern (default 19000)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the calling pattern (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON output file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        data = np.load(args.memories)
        keys, queries = torch.from_numpy(data["keys"]), torch.from_numpy(data["queries"])
    except (OSError, KeyError, ValueError) as error:
        parser.error(f"cannot read keys and queries from {args.memories}: {error}")
    for spec in args.indexes:
        try:
            make_index(spec)
        except ValueError as error:
            parser.error(str(error))
    if queries.shape[0] <= args.skip or keys.shape[0] < args.n + args.steps // args.k_att + 1:
        parser.error(f"{args.memories} holds {keys.shape[0]} keys and {queries.shape[0]} queries: too few for "
                     f"--skip {args.skip}, --n {args.n} and --steps {args.steps}")
    g = torch.Generator().manual_seed(args.seed)
    steps = sorted(torch.randint(args.skip, queries.shape[0], (args.queries,), generator=g).tolist())
    recall_rows = [replay_recall(keys, queries, spec, args.k_att, args.k_top, steps) for spec in ["exact", *args.indexes]]
    print(f"recall in the model's order ({len(steps)} steps of one sequence, k_top={args.k_top}):")
    for row in recall_rows:
        print(f"  {row['index']:45s} recall {row['recall']:.3f} (min {row['recall_min']:.2f})  "
              f"{row['ms_per_search']:.3f} ms per search")
    pattern_rows = []
    for batch_size in args.batch_sizes:
        pattern_rows += calling_pattern(keys, queries, args.indexes, args.k_att, args.k_top, batch_size, args.n, args.steps)
    print(f"calling pattern ({args.steps} steps, one search per step, one add every {args.k_att}):")
    for row in pattern_rows:
        print(f"  B={row['B']} N={row['N']} {row['index']:45s} {row['ms_per_step']:.3f} ms per step "
              f"({row['ratio_to_exact']:.2f}x exact)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "recall": recall_rows, "pattern": pattern_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
