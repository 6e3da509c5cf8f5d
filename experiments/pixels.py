"""Tables, figures and kept records of pixel-by-pixel runs (``experiments/pixels_row.sh``).

    python experiments/pixels.py table runs/pixels/sab-p-s0 runs/pixels/lstm-p-s0 ...
    python experiments/pixels.py figure experiments/figures/pixels_permuted.png runs/pixels/*-p-s*
    python experiments/pixels.py keep experiments/records/pixels runs/pixels/*

A row of ``pixels_row.sh`` trains for a budget of updates, classifies the test split (the "equal updates"
reading), continues until a wall-clock budget and classifies the test split again ("equal wall-clock"; a
row that was past the budget already has one reading, the same model for both).
``table`` prints one Markdown row per run: its test accuracy at both readings with the updates and
seconds each was taken at, the last periodic validation accuracy, and the seconds per update (median).
Runs with the same name up to ``-s<seed>`` are then summarised: mean and range over seeds of both
readings. ``figure`` draws validation accuracy against updates and against wall-clock time, one line per
run. ``keep`` copies each run's metrics (every eval line, every 10th train line) and its config.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sab_mips.training.rundir import CONFIG_FILE, METRICS_FILE, read_metrics  # noqa: E402


def records(run: Path) -> list[dict]:
    """A run's metrics lines: from its directory, or from a kept ``.jsonl`` file."""
    return read_metrics(run / METRICS_FILE if run.is_dir() else run)


def label(run: Path) -> str:
    return run.stem if run.suffix == ".jsonl" else run.name


def readings(lines: list[dict]) -> dict:
    """The two test evaluations (equal updates, equal wall-clock), the wall time each was taken at (that
    of the last train line before it), the last validation accuracy and the median seconds per update."""
    train = [r for r in lines if r.get("split") == "train"]
    tests = [r for r in lines if r.get("split") == "eval" and r.get("data") == "test"]
    valid = [r for r in lines if r.get("split") == "eval" and "source" not in r]
    wall = {r["step"]: r["wall_time"] for r in train}
    out = {"valid": valid[-1]["accuracy"] if valid else None,
           "sec_per_update": statistics.median(r["sec_per_update"] for r in train) if train else None}
    for name, test in zip(("updates", "wall"), tests[:2]):
        out[name] = {"accuracy": test["accuracy"], "step": test["step"], "wall": wall.get(test["step"])}
    if len(tests) == 1 and train and train[-1]["step"] == tests[0]["step"]:
        out["wall"] = out["updates"]  # the budget of seconds ran out before the budget of updates: one model
    return out


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(runs: list[Path]) -> str:
    head = ("| run | test acc., equal updates | (updates, s) | test acc., equal wall-clock | (updates, s) | "
            "last valid acc. | s/update |\n|---|---|---|---|---|---|---|")
    rows, groups = [head], {}
    for run in runs:
        r = readings(records(run))
        cells = [label(run)]
        for name in ("updates", "wall"):
            at = r.get(name)
            cells += [fmt(at and at["accuracy"], 4), "–" if at is None else f"{at['step']}, {fmt(at['wall'], 0)}"]
        cells += [fmt(r["valid"], 4), fmt(r["sec_per_update"], 3)]
        rows.append("| " + " | ".join(cells) + " |")
        groups.setdefault(re.sub(r"-s\d+$", "", label(run)), []).append(r)
    rows += ["", "| row | runs | equal updates: mean (range) | equal wall-clock: mean (range) |", "|---|---|---|---|"]
    for name, members in groups.items():
        cells = [name, str(len(members))]
        for reading in ("updates", "wall"):
            values = [m[reading]["accuracy"] for m in members if m.get(reading)]
            cells.append("–" if not values else
                         f"{statistics.fmean(values):.4f} ({min(values):.4f}–{max(values):.4f})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def figure(path: Path, runs: list[Path], title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        lines = records(run)
        valid = [r for r in lines if r.get("split") == "eval" and "source" not in r]
        if not valid:
            continue
        line, = axes[0].plot([r["step"] for r in valid], [r["accuracy"] for r in valid], marker=".", label=label(run))
        axes[1].plot([r["wall_time"] for r in valid], [r["accuracy"] for r in valid], marker=".",
                     color=line.get_color(), label=label(run))
    axes[0].set(xlabel="updates", ylabel="validation accuracy (first 256 images)")
    axes[1].set(xlabel="wall-clock seconds (one thread)", ylabel="validation accuracy (first 256 images)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def keep(directory: Path, runs: list[Path]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for run in runs:
        lines = records(run)
        kept = [r for r in lines if r.get("split") != "train" or r["step"] % 10 == 0]
        (directory / f"{label(run)}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        shutil.copyfile(run / CONFIG_FILE, directory / f"{label(run)}.config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table").add_argument("runs", nargs="+", type=Path)
    fig = sub.add_parser("figure")
    fig.add_argument("out", type=Path)
    fig.add_argument("runs", nargs="+", type=Path)
    fig.add_argument("--title", default="")
    kept = sub.add_parser("keep")
    kept.add_argument("directory", type=Path)
    kept.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "table":
        print(table(args.runs))
    elif args.command == "figure":
        print(f"wrote {figure(args.out, args.runs, args.title)}")
    else:
        keep(args.directory, args.runs)


if __name__ == "__main__":
    main()
