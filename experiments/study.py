"""Run a study (several settings × seeds, the same budget) and tabulate it over seeds.

    python experiments/study.py run experiments/plans/copy100.json [--parallel 2] [--settings S..] [--seeds N..]
    python experiments/study.py table experiments/plans/copy100.json [--at 2500 5000 10000] [--threshold 0.99]
    python experiments/study.py curves fig.png --panel "k_att=5" runs/a-s0 runs/a-s1 --panel "k_att=2" runs/b-s0

A plan is a JSON object:

    {"root": "runs/copy100",                        # run directories go to ROOT/<setting>-s<seed>
     "common": ["--task", "copy", "--T", "100"],     # flags every run gets (sab-mips train flags)
     "settings": {"recommended": {"flags": ["--preset", "recommended"], "seeds": [0, 1, 2]},
                  "paper": {"flags": ["--preset", "paper"], "seeds": [0, 1, 2]}}}

``run`` trains every (setting, seed) with ``sab-mips train`` (one thread per run, ``--parallel`` runs at a
time), resuming runs a previous call left unfinished, so a study can be stopped and continued. ``table``
reads the runs' metrics.jsonl and prints a Markdown table per setting: the primary eval metric at the
``--at`` updates, at the end of each run (with a time budget: at equal wall-clock time) and at its best
(mean ± s.d., min–max, number of runs), the updates done, how many runs reached ``--threshold`` and after
how many updates, the collapses (accuracy: after first passing ``--collapse-after`` it falls more than
``--collapse-drop`` below its best so far), seconds per update and wall time. Runs that failed or are not
finished count: a missing value is shown, never dropped silently. ``curves`` draws the eval metric of
every run against its updates, one panel per ``--panel`` (a title and run directories), on shared axes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sab_mips.tasks import get_task
from sab_mips.training.rundir import CHECKPOINT_FILE, METRICS_FILE, read_metrics


def load_plan(path: Path) -> dict:
    plan = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(plan.get("settings"), dict) or "root" not in plan:
        raise SystemExit(f"{path}: a plan needs 'root' and 'settings' (see experiments/study.py)")
    return plan


def runs(plan: dict) -> list[tuple[str, int, Path, list[str]]]:
    """(setting, seed, run directory, flags) of every run of the plan."""
    out = []
    for name, setting in plan["settings"].items():
        for seed in setting.get("seeds", [0]):
            flags = [*plan.get("common", []), *setting.get("flags", []), "--seed", str(seed)]
            out.append((name, seed, Path(plan["root"]) / f"{name}-s{seed}", flags))
    return out


def train_one(run_dir: Path, flags: list[str]) -> int:
    resume = ["--resume"] if (run_dir / CHECKPOINT_FILE).is_file() else []
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sab_mips", "train", *flags, *resume, "--run-dir", str(run_dir), "--no-progress"]
    with open(log, "a", encoding="utf-8") as f:
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    print(f"{run_dir}: exit {code} (log {log})", flush=True)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    planned = runs(load_plan(args.plan))
    unknown = set(args.seeds or ()) - {seed for _, seed, _, _ in planned}
    if unknown:
        raise SystemExit(f"{args.plan}: no run has seed {', '.join(map(str, sorted(unknown)))}")
    unknown = set(args.settings or ()) - {name for name, _, _, _ in planned}
    if unknown:
        raise SystemExit(f"{args.plan}: no setting {', '.join(sorted(unknown))}")
    todo = [r for r in planned if (args.seeds is None or r[1] in args.seeds)
            and (args.settings is None or r[0] in args.settings)]
    if args.steps is not None:  # the last --steps flag wins
        todo = [(name, seed, run_dir, [*flags, "--steps", str(args.steps)]) for name, seed, run_dir, flags in todo]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        codes = list(pool.map(lambda r: train_one(r[2], r[3]), todo))
    return 0 if all(c == 0 for c in codes) else 1


def series(run_dir: Path, primary: str) -> tuple[list[tuple[int, float]], list[dict]]:
    records = read_metrics(run_dir / METRICS_FILE)
    evals = sorted((r["step"], r[primary]) for r in records if r.get("split") == "eval" and "source" not in r
                   and primary in r)
    return evals, [r for r in records if r.get("split") == "train"]


def value_at(evals: list[tuple[int, float]], step: int) -> float | None:
    """The eval metric at ``step`` (the last eval at or before it, if the run got that far)."""
    done = [v for s, v in evals if s <= step]
    return done[-1] if done and evals[-1][0] >= step else None


def first_reaching(evals: list[tuple[int, float]], threshold: float, higher: bool) -> int | None:
    return next((s for s, v in evals if (v >= threshold if higher else v <= threshold)), None)


def falls(evals: list[tuple[int, float]], after: float, drop: float) -> list[tuple[int, float, float]]:
    """Where the metric fell more than ``drop`` below its best so far, once it had passed ``after``: (update,
    best before it, value) at the first evaluation of each fall."""
    found, best, armed, down = [], float("-inf"), False, False
    for step, v in evals:
        best = max(best, v)
        armed = armed or v >= after
        if armed and v < best - drop:
            if not down:
                found.append((step, best, v))
            down = True
        elif v >= best - drop:
            down = False
    return found


def collapses(evals: list[tuple[int, float]], after: float, drop: float) -> int:
    """Times the metric fell more than ``drop`` below its best so far, once it had passed ``after``."""
    return len(falls(evals, after, drop))


def describe(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return f"– (0/{len(values)})"
    spread = f" ± {statistics.stdev(done):.3f}" if len(done) > 1 else ""
    return f"{statistics.fmean(done):.3f}{spread} ({min(done):.3f}–{max(done):.3f}, n={len(done)}/{len(values)})"


def cmd_table(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    task = get_task(dict(zip(plan.get("common", [])[::2], plan.get("common", [])[1::2])).get("--task", "copy"))
    primary, higher = task.primary, task.higher_is_better
    header = ["setting", *[f"{primary} @ {a}" for a in args.at], f"{primary} at the end", f"best {primary}",
              "updates done", f"reached {args.threshold} (updates)",
              "collapses", "s/update", "wall (s)"]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    by_setting: dict[str, list[Path]] = {}
    for name, _, run_dir, _ in runs(plan):
        by_setting.setdefault(name, []).append(run_dir)
    for name, dirs in by_setting.items():
        loaded = [series(d, primary) for d in dirs]
        reached = [first_reaching(e, args.threshold, higher) for e, _ in loaded]
        cells = [describe([value_at(e, a) for e, _ in loaded]) for a in args.at]
        # a time-budgeted run ends with an eval: "at the end" is the metric at equal wall-clock budget
        cells.append(describe([e[-1][1] if e else None for e, _ in loaded]))
        cells.append(describe([(max if higher else min)(v for _, v in e) if e else None for e, _ in loaded]))
        cells.append(", ".join(str(t[-1]["step"]) if t else "–" for _, t in loaded))
        hit = [r for r in reached if r is not None]
        cells.append(f"{len(hit)}/{len(dirs)}" + (f" ({', '.join(map(str, hit))})" if hit else ""))
        # the collapse rule is defined on a metric where higher is better (accuracy)
        cells.append(", ".join(str(collapses(e, args.collapse_after, args.collapse_drop)) for e, _ in loaded)
                     if higher else "–")
        speeds = [statistics.median(r["sec_per_update"] for r in t) for _, t in loaded if t]
        cells.append(f"{statistics.fmean(speeds):.3f}" if speeds else "–")
        walls = [t[-1]["wall_time"] for _, t in loaded if t]
        cells.append(", ".join(f"{w:.0f}" for w in walls) or "–")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.per_run:
        print_per_run(plan, args, primary, higher)
    return 0


def print_per_run(plan: dict, args: argparse.Namespace, primary: str, higher: bool) -> None:
    """One row per run: the metric at ``--at``, when it reached the threshold, each collapse (update: best
    before → value), the largest gradient norm before clipping, and the last evaluation."""
    header = ["setting", "seed", *[f"@ {a}" for a in args.at], f"reached {args.threshold}", "collapses",
              "largest gradient norm", "last evaluation"]
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for name, seed, run_dir, _ in runs(plan):
        evals, train = series(run_dir, primary)
        cells = [f"{v:.3f}" if (v := value_at(evals, a)) is not None else "–" for a in args.at]
        cells.append(str(first_reaching(evals, args.threshold, higher) or "–"))
        found = falls(evals, args.collapse_after, args.collapse_drop) if higher else []
        cells.append(f"{len(found)}" + "".join(f"; {s}: {b:.3f} → {v:.3f}" for s, b, v in found))
        cells.append(f"{max(r['grad_norm'] for r in train):.3g}" if train else "–")
        cells.append(f"{evals[-1][0]}: {evals[-1][1]:.3f}" if evals else "–")
        print(f"| {name} | {seed} | " + " | ".join(cells) + " |")


def cmd_curves(args: argparse.Namespace) -> int:
    for title, *dirs in args.panel:
        if not dirs:
            raise SystemExit(f"--panel {title!r}: a panel needs a title and at least one run directory")
        missing = [d for d in dirs if not (Path(d) / METRICS_FILE).is_file()]
        if missing:
            raise SystemExit(f"--panel {title!r}: no {METRICS_FILE} in {', '.join(missing)}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.panel), figsize=(5 * len(args.panel), 3.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (title, *dirs) in zip(axes[0], args.panel):
        for run_dir in map(Path, dirs):
            evals, _ = series(run_dir, args.metric)
            ax.plot([s for s, _ in evals], [v for _, v in evals], lw=1, label=run_dir.name)
        ax.set_title(title)
        ax.set_xlabel("updates")
        if args.log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(args.metric)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every run of the plan (resuming unfinished ones)")
    run.add_argument("plan", type=Path)
    run.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    run.add_argument("--seeds", type=int, nargs="+", help="run only these seeds of the plan (to share the cores "
                     "between invocations without two of them training the same run)")
    run.add_argument("--settings", nargs="+", help="run only these settings of the plan (with --seeds: the runs "
                     "that are in both)")
    run.add_argument("--steps", type=int, help="stop each run at this many updates instead of the plan's (running "
                     "the plan again later continues the same runs)")
    table = sub.add_parser("table", help="a Markdown table over seeds")
    table.add_argument("plan", type=Path)
    table.add_argument("--at", type=int, nargs="+", default=[2500, 5000, 10000], help="updates to report at")
    table.add_argument("--threshold", type=float, default=0.99, help="the target value of the primary metric")
    table.add_argument("--collapse-after", type=float, default=0.5)
    table.add_argument("--collapse-drop", type=float, default=0.2)
    table.add_argument("--per-run", action="store_true", help="also a table with one row per run (where each "
                       "collapse happened, the largest gradient norm)")
    curves = sub.add_parser("curves", help="eval curves of runs, one panel per group, as a PNG")
    curves.add_argument("out", type=Path, help="the PNG to write")
    curves.add_argument("--panel", nargs="+", action="append", required=True, metavar="TITLE DIR",
                        help="a panel's title, then its run directories (repeat for more panels)")
    curves.add_argument("--metric", default="accuracy", help="the eval metric to draw")
    curves.add_argument("--log", action="store_true", help="a log scale for the metric (e.g. for mse)")
    args = parser.parse_args(argv)
    return {"run": cmd_run, "table": cmd_table, "curves": cmd_curves}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
