"""Benchmark: time of one training step (forward, backward, optimizer) per time step.

Runs SAB (on each of its kernels: the compiled C++ recurrence and the step-by-step Python path) and the
fused ``nn.LSTM`` with full BPTT in the same process on the same inputs, at each batch size, and reports
milliseconds per time step and the ratios that the targets are stated in:

* ``x lstm``  a model's cost over the fused LSTM's at the same B and T;
* ``x T0``    its cost per step at T over its cost per step at the smallest T (flat in T: close to 1).

Settings are timed in interleaved rounds and each ratio is the median of per-round ratios, because this
kind of machine is noisy: a ratio of two timings taken at the same moment is far steadier than either.

Run: ``sab-mips bench step``; ``--help`` lists the options.
Prints a table and writes JSON (atomically). Never asserts: speed is measured here, not in tests.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from ..devices import DEVICE_HELP, resolve_device, synchronize
from ..kernel import build_failure
from ..model import SABConfig, build_model
from ..model.config import PRESETS
from .common import bench_command, prepare, save_rows


class TrainingStep:
    """One model's full training step (forward, backward, Adam) on fixed inputs, repeatable.

    Every timed update starts from the same initial parameters and optimizer state, so each measures the
    same work (and an untrained SAB at large T, whose gradients can overflow, cannot poison later runs).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.initial = copy.deepcopy(model.state_dict())
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def seconds(self) -> float:
        self.model.load_state_dict(self.initial)
        self.optimizer.state.clear()
        synchronize(self.x.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(self.x)
        loss = self.loss_fn(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        synchronize(self.x.device)  # on CUDA, wait for the queued kernels: they are the step's time
        return time.perf_counter() - start


# A timed setting: (model label, B, T). SAB's label names its kernel: "sab:compiled", "sab:python".
Key = tuple[str, int, int]


def build_steps(lengths: list[int], models: list[str], batch_sizes: list[int], hidden_size: int, k_att: int,
                k_top: int, k_trunc: int, attend_every: int, seed: int, preset: str = "paper",
                device: torch.device = torch.device("cpu"), kernels: tuple[str, ...] = ("compiled",)) -> dict[Key, TrainingStep]:
    steps = {}
    for B in batch_sizes:
        for T in lengths:
            g = torch.Generator().manual_seed(seed)
            x = torch.nn.functional.one_hot(torch.randint(0, 10, (B, T), generator=g), 10).float().to(device)
            y = torch.randint(0, 10, (B, T), generator=g).to(device)
            for name in models:
                fields = dict(model=name, preset=preset, input_size=10, output_size=10, hidden_size=hidden_size)
                if name in ("sab", "dense"):
                    fields.update(k_att=k_att, attend_every=attend_every)
                if name == "sab":
                    fields.update(k_top=k_top)
                if name in ("sab", "tbptt"):
                    fields.update(k_trunc=k_trunc)
                for kernel in kernels if name == "sab" else (None,):
                    torch.manual_seed(seed)
                    model = build_model(SABConfig(**fields)).to(device)
                    if kernel is not None:
                        model.layer.set_kernel(kernel)
                    steps[f"{name}:{kernel}" if kernel else name, B, T] = TrainingStep(model, x, y)
    return steps


def run(steps: dict[Key, TrainingStep], rounds: int) -> list[dict]:
    """Time every (model, B, T) once per round, interleaved, so that load changes hit all of them alike.

    Ratios are computed within a round (same moment, same load) and their median over rounds is reported.
    """
    for step in steps.values():
        step.seconds()  # warm-up
    times: dict[Key, list[float]] = {key: [] for key in steps}
    for r in range(rounds):
        for key, step in steps.items():
            times[key].append(step.seconds())
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name}@B{B},T{T} {1e3 * times[name, B, T][-1] / T:.3f}" for name, B, T in steps), flush=True)
    smallest_T = min(T for _, _, T in steps)
    rows = []
    for (name, B, T), secs in times.items():
        row = {"model": name, "B": B, "T": T, "ms_per_step": 1e3 * statistics.median(secs) / T,
               "ms_per_step_all_rounds": [1e3 * s / T for s in secs]}
        if ("lstm", B, T) in times:
            row["ratio_to_lstm"] = statistics.median(s / b for s, b in zip(secs, times["lstm", B, T]))
        else:
            row["ratio_to_lstm"] = None
        base = times[name, B, smallest_T]
        row["ratio_to_smallest_T"] = statistics.median((s / T) / (b / smallest_T) for s, b in zip(secs, base))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':13s} {'B':>4s} {'T':>6s} {'ms/step':>9s} {'x lstm':>8s} {'x T0':>7s}"]
    for r in rows:
        ratio = f"{r['ratio_to_lstm']:.2f}" if r["ratio_to_lstm"] is not None else "-"
        lines.append(f"{r['model']:13s} {r['B']:4d} {r['T']:6d} {r['ms_per_step']:9.3f} {ratio:>8s} "
                     f"{r['ratio_to_smallest_T']:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sab-mips bench step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000, 3000], help="sequence lengths")
    parser.add_argument("--models", nargs="+", default=["lstm", "sab"], choices=["lstm", "sab", "tbptt", "dense"],
                        help="models to time; 'lstm' (fused, full BPTT) is the baseline of the ratios")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64], help="batch sizes (each timed)")
    parser.add_argument("--kernels", nargs="+", default=["compiled", "python"], choices=["compiled", "python", "auto"],
                        help="SAB's kernels to time (sab-mips info says whether the compiled one builds here)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--k-att", type=int, default=10)
    parser.add_argument("--k-top", type=int, default=5)
    parser.add_argument("--k-trunc", type=int, default=10)
    parser.add_argument("--attend-every", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed updates per setting, interleaved across settings (medians reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--preset", default="paper", choices=tuple(PRESETS), help="SAB's preset (default: paper)")
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/step.json"), help="JSON output file")
    args = parser.parse_args(argv)
    if min(args.T) < 1 or args.rounds < 1 or min(args.batch_size) < 1:
        parser.error("--T, --rounds and --batch-size must be >= 1")
    prepare(args.threads)
    print(f"training-step benchmark: B={' '.join(map(str, args.batch_size))} H={args.hidden_size} k_att={args.k_att} "
          f"k_top={args.k_top} k_trunc={args.k_trunc} attend_every={args.attend_every}, preset {args.preset}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    device = resolve_device(args.device)
    if "sab" in args.models and "compiled" in args.kernels and build_failure():
        parser.error(f"the compiled kernel is unavailable: {build_failure()} (--kernels python times the Python path)")
    steps = build_steps(sorted(args.T), args.models, args.batch_size, args.hidden_size, args.k_att, args.k_top,
                        args.k_trunc, args.attend_every, args.seed, args.preset, device, tuple(args.kernels))
    rows = run(steps, args.rounds)
    print(format_table(rows))
    save_rows(args, rows, bench_command("step", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
