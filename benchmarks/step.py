"""Benchmark: time of one training step (forward, backward, optimizer) per time step.

Runs SAB and the fused ``nn.LSTM`` with full BPTT in the same process on the same inputs and reports
milliseconds per time step and the ratios that the targets are stated in:

* ``sab/lstm``     SAB's cost over the fused LSTM's at the same T (target: at most 3x at T=1000);
* ``sab/sab@T0``   SAB's cost at T over its cost at the smallest T (target: at most 1.5x at T=3000).

Run: ``sab-mips bench step`` (or ``python -m benchmarks.step``); ``--help`` lists the options.
Prints a table and writes JSON (atomically). Never asserts: speed is measured here, not in tests.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sab_mips import SABConfig, build_model


def time_training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Median seconds of one full training step over ``repeats`` runs (after one warm-up).

    Every timed update starts from the same initial parameters and optimizer state, so each measures the
    same work (and an untrained SAB at large T, whose gradients can overflow, cannot poison later runs).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    initial = copy.deepcopy(model.state_dict())
    times = []
    for i in range(repeats + 1):
        model.load_state_dict(initial)
        optimizer.state.clear()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(lengths: list[int], models: list[str], batch_size: int, hidden_size: int, k_att: int, k_top: int,
        k_trunc: int, attend_every: int, repeats: int, seed: int) -> list[dict]:
    rows = []
    for T in lengths:
        g = torch.Generator().manual_seed(seed)
        x = torch.nn.functional.one_hot(torch.randint(0, 10, (batch_size, T), generator=g), 10).float()
        y = torch.randint(0, 10, (batch_size, T), generator=g)
        for name in models:
            fields = dict(model=name, input_size=10, output_size=10, hidden_size=hidden_size)
            if name in ("sab", "dense"):
                fields.update(k_att=k_att, attend_every=attend_every)
            if name == "sab":
                fields.update(k_top=k_top)
            if name in ("sab", "tbptt"):
                fields.update(k_trunc=k_trunc)
            torch.manual_seed(seed)
            model = build_model(SABConfig(**fields))
            seconds = time_training_step(model, x, y, repeats)
            rows.append({"model": name, "T": T, "seconds_per_update": seconds, "ms_per_step": 1e3 * seconds / T})
            print(f"  measured {name:6s} T={T:5d}: {1e3 * seconds / T:.3f} ms/step", flush=True)
    baseline = {r["T"]: r["ms_per_step"] for r in rows if r["model"] == "lstm"}
    first = {}
    for r in rows:
        first.setdefault(r["model"], r["ms_per_step"])
        r["ratio_to_lstm"] = r["ms_per_step"] / baseline[r["T"]] if r["T"] in baseline else None
        r["ratio_to_smallest_T"] = r["ms_per_step"] / first[r["model"]]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':8s} {'T':>6s} {'ms/step':>9s} {'x lstm':>8s} {'x T0':>7s}"]
    for r in rows:
        ratio = f"{r['ratio_to_lstm']:.2f}" if r["ratio_to_lstm"] is not None else "-"
        lines.append(f"{r['model']:8s} {r['T']:6d} {r['ms_per_step']:9.3f} {ratio:>8s} {r['ratio_to_smallest_T']:7.2f}")
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sab-mips bench step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000, 3000], help="sequence lengths")
    parser.add_argument("--models", nargs="+", default=["lstm", "sab"], choices=["lstm", "sab", "tbptt", "dense"],
                        help="models to time; 'lstm' (fused, full BPTT) is the baseline of the ratios")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--k-att", type=int, default=10)
    parser.add_argument("--k-top", type=int, default=5)
    parser.add_argument("--k-trunc", type=int, default=10)
    parser.add_argument("--attend-every", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per setting (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/step.json"), help="JSON output file")
    args = parser.parse_args(argv)
    if min(args.T) < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--T, --repeats and --batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"training-step benchmark: B={args.batch_size} H={args.hidden_size} k_att={args.k_att} "
          f"k_top={args.k_top} k_trunc={args.k_trunc} attend_every={args.attend_every}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = run(args.T, args.models, args.batch_size, args.hidden_size, args.k_att, args.k_top, args.k_trunc,
               args.attend_every, args.repeats, args.seed)
    print(format_table(rows))
    payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
               "rows": rows}
    write_json_atomic(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
