"""``sab-mips generate``: sample text from a trained text run, its memory filled by the prompt.

Reads the run's checkpoint and vocabulary, streams the prompt (``--prompt``, or a file with
``--prompt-file``) through the model with its memory, then samples ``--chars`` characters one at a time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import resolve_device, set_threads
from ..errors import UserError
from ..training.generate import generate
from ..training.stream import load_stream_run
from .flags import add_compute_flags

HELP = "sample text from a trained text run (task text), its memory filled by the prompt"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR", help="run directory of a text run")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the text the model reads first")
    prompt.add_argument("--prompt-file", metavar="FILE", help="a UTF-8 file the model reads first (a long one "
                                                              "fills the memory)")
    parser.add_argument("--chars", type=int, default=200, metavar="N", help="characters to sample (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (default 1)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="sample among the K likeliest characters only (default 0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    add_compute_flags(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.chars < 0:
        raise UserError(f"--chars must be >= 0, got {args.chars}")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    prompt = args.prompt
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file {path} does not exist")
        try:
            prompt = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"--prompt-file {path} is not UTF-8 (byte {error.start})") from None
    if not prompt:
        raise UserError("the prompt is empty: give at least one character")
    model, corpus, train_cfg, _ = load_stream_run(args.run)
    model.to(resolve_device(args.device))
    text = generate(model, corpus.vocabulary, prompt, args.chars, temperature=args.temperature, seed=args.seed,
                    top_k=args.top_k, window=train_cfg.window)
    print(text)
    return 0
