"""What a streaming model uses its memory for: the next windows of its training streams, read with its own
memory and with memories swapped or cut.

    python experiments/memory_swap.py runs/kjv/ivf-s0 [--windows 3] [--slots 1000] [--out swap.jsonl]

From the checkpoint's training state (step s, the memory of every stream), windows s, s+1, ... of the
training streams are read without a graph, each variant starting from the same (h, c):

* ``own``: the stream's own memory, as training left it;
* ``another stream's``: stream b gets stream b+1's memory (other text, written by the same weights);
* ``newest N`` / ``oldest N``: only the stream's N newest / oldest slots (written by recent weights / by
  the weights at the start of the pass);
* ``empty``: no memory at all.

If the model used its memory for the text in it, another stream's memory would cost bits; if it relies on
slots written by the weights of some time, the newest and the oldest slots differ. Prints one line per
variant (bits per character of each window) and writes them as JSON lines with ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from sab_mips.corpora import streams, window
from sab_mips.training.stream import BITS_PER_NAT, StreamRunner, load_stream_run, one_hot


def variants(saved: dict, slots: int) -> dict[str, dict]:
    """The memory variants of a checkpoint's stream state (their indexes rebuilt over today's keys)."""
    def with_slots(values: torch.Tensor, times: list[int]) -> dict:
        return {**saved, "values": values, "times": times, "index": None, "reference": None}

    values, times = saved["values"], saved["times"]
    return {"own": saved,
            "another stream's": with_slots(values.roll(1, dims=0), times),
            f"newest {slots}": with_slots(values[:, -slots:], times[-slots:]),
            f"oldest {slots}": with_slots(values[:, :slots], times[:slots]),
            "empty": with_slots(values[:, :0], [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a text run directory (model sab)")
    parser.add_argument("--windows", type=int, default=3, help="windows read after the checkpoint (default 3)")
    parser.add_argument("--slots", type=int, default=1000, help="N of the newest / oldest variants (default 1000)")
    parser.add_argument("--out", help="write the results as JSON lines here")
    args = parser.parse_args(argv)
    model, corpus, cfg, saved = load_stream_run(args.run)
    model.eval()
    state = saved["stream_state"]
    rows = streams(corpus.splits["train"], cfg.batch_size, cfg.window)
    first = saved["step"] % ((rows.shape[1] - 1) // cfg.window)
    V, param = model.config.input_size, next(model.parameters())
    results = []
    for name, variant in variants(state, args.slots).items():
        runner = StreamRunner(model, cfg.replace(audit_every=0), cfg.batch_size)
        runner.load_state_dict(variant, param)
        bits = []
        with torch.no_grad():
            for w in range(first, first + args.windows):
                x, y = window(rows, w * cfg.window, cfg.window)
                logits = runner.step(one_hot(x, V, param.dtype))
                runner.end_window()
                bits.append(float(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))) * BITS_PER_NAT)
        results.append({"run": args.run, "step": saved["step"], "variant": name,
                        "slots": variant["values"].shape[1], "bpc": bits})
        print(f"{name:>22}: {variant['values'].shape[1]:>6} slots, bpc " + " ".join(f"{b:.3f}" for b in bits),
              flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
