"""The ``sab-mips`` command line: one module per subcommand, one shared module of flags (``flags``).

Each subcommand module has ``HELP``, ``configure(parser)`` and ``run(args) -> int``. The CLI imports the
library; the library never imports the CLI.

Only ``UserError`` (a mistake in what was asked: an option, a file, a run directory) ends as one line
``sab-mips: error: ...`` on stderr with exit status 2; any other exception is a bug and keeps its traceback.

Example:
    $ sab-mips train --task copy --T 20 --model sab --k-top 5 --run-dir runs/copy20 --time-budget 180
    $ sab-mips eval --run runs/copy20 --T 100
    $ sab-mips plot --run runs/copy20
    $ sab-mips train --task text --data kjv --window 200 --batch-size 8 --model sab --run-dir runs/kjv
    $ sab-mips generate --run runs/kjv --prompt "In the beginning" --chars 200
    $ sab-mips compare --task copy --T 20 --out reports/copy20 --retrieval exact "alsh:K=6,L=32"
    $ sab-mips tune --backend faiss:HNSW32,exact_below=0 --memories mem.npz --grid efSearch=16,32,64
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..bench import BENCHMARKS
from ..errors import UserError
from . import bench, compare, evaluate, generate, info, plot, train, tune
from .flags import Parser

PROG = "sab-mips"
SUBCOMMANDS = {"train": train, "eval": evaluate, "generate": generate, "plot": plot, "compare": compare, "tune": tune,
               "info": info, "bench": bench}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per module of ``SUBCOMMANDS``."""
    parser = Parser(prog=PROG, description="Sparse Attentive Backtracking with MIPS retrieval: "
                                           "train, evaluate and plot runs; benchmark steps and retrieval.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, module in SUBCOMMANDS.items():
        description = getattr(module, "DESCRIPTION", None) or module.__doc__.split("\n\n")[1].replace("``", "")
        module.configure(sub.add_parser(name, help=module.HELP, description=description))
    return parser


def _main(argv: list[str]) -> int:
    # Dispatch benchmarks before argparse sees their flags, so 'bench step --help' reaches the benchmark.
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHMARKS:
        return bench.run_benchmark(argv[1], argv[2:])
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sab-mips``; returns the exit status (2 for user errors, printed as one line)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and argparse's own exits
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
