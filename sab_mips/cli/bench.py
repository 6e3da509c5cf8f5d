"""``sab-mips bench NAME ...``: run a benchmark harness of ``sab_mips.bench`` with the remaining arguments."""
from __future__ import annotations

import argparse
import importlib

from ..bench import BENCHMARKS

HELP = "benchmarks: 'bench step|retrieval|heavy|long ...'"
DESCRIPTION = "Run a benchmark; arguments after its name go to it (see 'sab-mips bench step --help')."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=BENCHMARKS, help="benchmark to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def run_benchmark(which: str, argv: list[str]) -> int:
    """Hand ``argv`` to ``sab_mips.bench.<which>.main``."""
    return int(importlib.import_module(f"sab_mips.bench.{which}").main(argv) or 0)


def run(args: argparse.Namespace) -> int:
    return run_benchmark(args.which, list(args.args))
