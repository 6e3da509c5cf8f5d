"""Train one config for N updates on each of SAB's kernels and compare the losses update by update.

    python experiments/kernel_parity.py experiments/configs/copy100_sab.json --steps 200 \
        --out experiments/records/kernel/copy100_sab_parity.json

Float32, the same seed, data and initial weights on both kernels (``--kernel python``: the step-by-step Python path,
``--kernel compiled``: the C++ recurrence): any difference comes from the order of floating-point
operations, and training, a chaotic map, may amplify it. Prints the largest relative loss difference over
the first 10, 50 and all updates, and the seconds per update of each kernel; writes every loss to JSON.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from sab_mips.bench.common import write_record
from sab_mips.cli.flags import read_config_file
from sab_mips.model import SABConfig
from sab_mips.training import TrainConfig
from sab_mips.training.loop import Trainer


def losses(config: Path, steps: int, kernel: str) -> tuple[list[float], float]:
    model_fields, train_fields = read_config_file(config)
    model_cfg = SABConfig(**model_fields)
    train_cfg = TrainConfig(**{**train_fields, "steps": steps, "kernel": kernel, "eval_every": steps,
                               "checkpoint_every": steps})
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model_cfg, train_cfg, run_dir, progress=False, device="cpu")
        start = time.perf_counter()
        out = [float(trainer.train_step()["loss"]) for _ in range(steps)]
        return out, (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a sab-mips train --config file (model sab)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON record")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    python, python_seconds = losses(args.config, args.steps, "python")
    compiled, compiled_seconds = losses(args.config, args.steps, "compiled")
    relative = [abs(c - p) / max(abs(p), 1e-30) for p, c in zip(python, compiled)]
    rows = {f"max_relative_difference_first_{n}": max(relative[:n]) for n in (10, 50, args.steps)}
    for name, value in rows.items():
        print(f"{name:40s} {value:.3e}")
    print(f"seconds per update: python {python_seconds:.3f}, compiled {compiled_seconds:.3f}")
    command = "python experiments/kernel_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_record(args.out, command, {**rows, "config": str(args.config), "steps": args.steps,
                                     "losses_python": python, "losses_compiled": compiled,
                                     "seconds_per_update_python": python_seconds,
                                     "seconds_per_update_compiled": compiled_seconds})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
