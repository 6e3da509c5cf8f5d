"""Tables, figures and kept records of streaming (task text) runs.

    python experiments/streams.py table runs/kjv/lstm-s0 runs/kjv/ivf-s0 ... [--at 1000 2326] [--minutes 30]
    python experiments/streams.py figure experiments/figures/kjv.png runs/kjv/lstm-s0 runs/kjv/ivf-s0 ...
    python experiments/streams.py keep experiments/records/kjv runs/kjv/lstm-s0 ...

``table`` prints one Markdown row per run: training bits per character (the mean of the 50 windows before
each ``--at`` update, and at ``--minutes`` of wall-clock time), the last validation and every test
evaluation (``sab-mips eval``), the updates and wall time, the time per step while the memory held about
10³ slots and at the end (and the slots then), the audited recall (min and mean) and the seconds spent
re-keying. A value the run does not have is shown as "–". ``figure`` draws ``sab_mips.plots.plot_streams``
of the runs, and the attention distances of their last evaluation that has them. ``keep`` copies what a
table and a figure need into the repository (a run directory is not kept): every eval line, every audited
train line (of a memory carried across windows), and every 10th train line (every n-th in a run of more
than 10,000 updates, so that about a thousand are kept).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sab_mips.plots import plot_attention_distances, plot_streams
from sab_mips.training.rundir import METRICS_FILE, read_metrics

SMOOTH = 50  # windows in a training bits-per-character reading


def records(run: Path) -> list[dict]:
    """A run's metrics lines: from its directory, or from a kept ``.jsonl`` file."""
    return read_metrics(run / METRICS_FILE if run.is_dir() else run)


def label(run: Path) -> str:
    return run.stem if run.suffix == ".jsonl" else run.name


def mean_until(train: list[dict], key: str, field: str, limit: float) -> float | None:
    """Mean of ``key`` over the SMOOTH train lines up to the last with ``field`` <= ``limit`` (None when the
    run has not reached ``limit``, or has fewer lines)."""
    if not train or train[-1][field] < limit:
        return None
    upto = [r[key] for r in train if r[field] <= limit]
    return statistics.fmean(upto[-SMOOTH:]) if len(upto) >= SMOOTH else None


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def row(run: Path, at: list[int], minutes: float | None) -> list[str]:
    lines = records(run)
    train = [r for r in lines if r.get("split") == "train"]
    evals = [r for r in lines if r.get("split") == "eval"]
    valid = [r for r in evals if r.get("data") == "valid" and "source" not in r]
    tests = [r for r in evals if r.get("data") == "test"]
    cells = [label(run)]
    cells += [fmt(mean_until(train, "bpc", "step", s)) for s in at]
    if minutes is not None:
        cells.append(fmt(mean_until(train, "bpc", "wall_time", 60 * minutes)))
    cells.append(fmt(valid[-1]["bpc"]) if valid else "–")
    cells.append(", ".join(f"{r['bpc']:.3f} ({r.get('retrieval', 'own')}, cap {r.get('memory_cap', 0)})" for r in tests)
                 or "–")
    cells.append(fmt(train[-1]["step"]) if train else "–")
    cells.append(fmt(train[-1]["wall_time"] / 60, 1) if train else "–")
    small = [r["ms_per_step"] for r in train if 500 <= r["memory_slots"] <= 2000]
    cells.append(fmt(statistics.median(small), 2) if small else "–")
    end = [r["ms_per_step"] for r in train[-SMOOTH:]]
    cells.append(fmt(statistics.median(end), 2) if end else "–")
    cells.append(fmt(train[-1]["memory_slots"]) if train else "–")
    recall = [r["recall"] for r in train if "recall" in r]
    cells.append(f"{min(recall):.3f} / {statistics.fmean(recall):.3f}" if recall else "–")
    cells.append(fmt(sum(r.get("refresh_seconds", 0.0) for r in train), 1))
    return cells


def cmd_table(args: argparse.Namespace) -> int:
    head = ["run", *[f"train bpc @ {s}" for s in args.at]]
    head += [f"train bpc @ {args.minutes:g} min"] if args.minutes is not None else []
    head += ["valid bpc (last)", "test bpc", "updates", "minutes", "ms/step at ~10³ slots", "ms/step at the end",
             "slots at the end", "recall min / mean", "re-keying s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in args.runs:
        print("| " + " | ".join(row(Path(run), args.at, args.minutes)) + " |")
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    runs = {label(Path(r)): records(Path(r)) for r in args.runs}
    print(f"wrote {plot_streams(runs, args.path, title=args.title)}")
    histograms = {}
    for name, lines in runs.items():
        with_hist = [r for r in lines if "attention_distance_hist" in r]
        if with_hist:
            last = with_hist[-1]
            histograms[f"{name} (old_attention {last['old_attention']:.2f})"] = last["attention_distance_hist"]
    if histograms:
        path = Path(args.path).with_name(Path(args.path).stem + "_attention.png")
        print(f"wrote {plot_attention_distances(histograms, path, title=args.title)}")
    return 0


def cmd_keep(args: argparse.Namespace) -> int:
    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    for run in map(Path, args.runs):
        # a window-only memory is audited in every window (each starts a fresh state): every 10th line is enough
        config = run / "config.json"
        window_only = config.is_file() and json.loads(config.read_text())["train"].get("memory") == "window"
        lines = records(run)
        updates = max((r["step"] for r in lines if r.get("split") == "train"), default=0)
        stride = max(10, updates // 1000)  # at most about a thousand plain train lines per run
        kept = [r for r in lines if r.get("split") != "train" or r["step"] % stride == 0 or r["step"] == 1
                or ("recall" in r and not window_only)]
        path = out / f"{label(run)}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if config.is_file():
            (out / f"{label(run)}.config.json").write_text(config.read_text())
        print(f"wrote {path} ({len(kept)} lines)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="a Markdown row per run")
    table.add_argument("runs", nargs="+", help="run directories or kept .jsonl records")
    table.add_argument("--at", type=int, nargs="+", default=[2326], help="updates to read training bpc at")
    table.add_argument("--minutes", type=float, help="also read training bpc at this wall-clock time")
    figure = sub.add_parser("figure", help="curves of the runs (and their attention distances) as PNG")
    figure.add_argument("path")
    figure.add_argument("runs", nargs="+")
    figure.add_argument("--title", default="")
    keep = sub.add_parser("keep", help="copy the runs' records into a folder of the repository")
    keep.add_argument("folder")
    keep.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    return {"table": cmd_table, "figure": cmd_figure, "keep": cmd_keep}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
