"""Copy-task accuracy per output position, at several lengths, for trained runs.

The copy task's accuracy is the mean over its 10 output steps. Where a model stands on the ~30% plateau,
this tells two things apart: whether it fails to find the slots that hold the digits (accuracy then falls
with T, since longer sequences hold more slots to choose from) or fails to read the digits out of the slots
it finds (accuracy the same at every T, and better for the digits a slot was written closest to).

    python experiments/copy_positions.py runs/study-copy100-katt/katt2-s4 --T 10 30 100 --out positions.json

Every run is evaluated on the same ``--batch-size`` sequences per T (one fixed draw of the eval stream), with
no graph, and one row per (run, T) is printed: the mean and the accuracy at output steps 1..10.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sab_mips.tasks import batch_generator
from sab_mips.training.rundir import load_run


def position_accuracy(run: Path, lengths: list[int], batch_size: int, seed: int) -> list[dict]:
    model, task, _, _, state = load_run(run)
    if task.name != "copy":
        raise SystemExit(f"{run}: task {task.name!r}, this script reads copy runs only")
    model.eval()
    rows = []
    for T in lengths:
        x, y = task.make_batch(T, batch_size, batch_generator(seed, 0, "eval"))
        with torch.no_grad():
            logits = model.predict(x).logits if hasattr(model, "predict") else model(x)
        n = task.n_digits
        per_position = (logits[:, -n:].argmax(-1) == y[:, -n:]).double().mean(0).tolist()
        rows.append({"run": str(run), "step": int(state["step"]), "T": T,
                     "accuracy": sum(per_position) / n, "per_position": per_position})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their checkpoint.pt is read)")
    parser.add_argument("--T", nargs="+", type=int, default=[10, 30, 100], help="copy lengths to evaluate at")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per length")
    parser.add_argument("--seed", type=int, default=0, help="eval stream seed")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for run in args.runs for row in position_accuracy(run, args.T, args.batch_size, args.seed)]
    print("| run | update | T | accuracy | output steps 1–10 |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = " ".join(f"{100 * a:.0f}" for a in r["per_position"])
        print(f"| {r['run']} | {r['step']} | {r['T']} | {100 * r['accuracy']:.1f}% | {cells} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
