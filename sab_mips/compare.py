"""``sab-mips compare``: the same SAB run (task, seed, budget) under several retrieval settings.

Each ``--retrieval`` factory string gets a run directory ``OUT/runs/<slug>`` trained by the one shared loop
(``sab_mips.train.train``); a directory that already holds a checkpoint is resumed instead (so an
interrupted or finished comparison is loaded, not retrained; its config must match). The report in
``OUT`` holds ``report.md`` (a Markdown table), ``compare.json`` and ``comparison.png`` (learning curves
and recall over training, overlaid).

Table columns, from each run's metrics.jsonl: final eval metrics, median seconds per update (audits
excluded, first update dropped as warm-up), median fraction of it spent in the index, mean recall@k_top
and attention mass recovered over the audited steps, mean gradient cosine (approximate vs exact).
Exact runs show 1 for recall and cosine: they are exact by construction and not audited.

With ``--seeds`` every setting is trained once per seed (``OUT/runs/<slug>-seed<s>``) and the report adds
a summary per setting over the seeds: mean, min and max of the final metric, and its mean and largest
difference to the first setting's run *of the same seed* (paired: same initial parameters, same data).
Single runs of unstable training differ by chance; the paired differences over several seeds are what
says whether a retrieval setting changes the result.

Example::

    $ sab-mips compare --task copy --T 50 --steps 100 --k-att 2 --out reports/copy50 \\
          --retrieval exact "faiss:HNSW32,efSearch=32,exact_below=0" "alsh:K=6,L=32"
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_FILE, METRICS_FILE, atomic_write_text, read_metrics
from .errors import UserError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add compare's flags: every train flag except --retrieval, which takes several values here."""
    from .cli import TASK_SIZED, _add_config_flags
    from .config import SABConfig, TrainConfig

    _add_config_flags(parser.add_argument_group("model (SABConfig)"), SABConfig, skip=(*TASK_SIZED, "retrieval"))
    _add_config_flags(parser.add_argument_group("training (TrainConfig)"), TrainConfig)
    parser.add_argument("--retrieval", nargs="+", required=True, metavar="FACTORY_STRING",
                        help="retrieval settings to compare, e.g. exact \"faiss:HNSW32,efSearch=32\"")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="train every setting once per seed (replaces --seed) and summarise over seeds")
    parser.add_argument("--out", required=True, metavar="DIR", help="report directory (runs go to DIR/runs/)")
    parser.add_argument("--config", metavar="FILE", help="JSON config shared by all runs (as for train)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def slug(spec: str) -> str:
    """A directory name for a factory string: ``faiss:HNSW32,efSearch=32`` -> ``faiss-HNSW32-efSearch=32``."""
    return re.sub(r"[^A-Za-z0-9=._]+", "-", spec).strip("-")


def summarize_run(run_dir: str | Path, primary: str) -> dict[str, Any]:
    """The table row of one run directory, from its metrics.jsonl (see the module docstring)."""
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval" and "source" not in r]
    if not train:
        raise UserError(f"run {run_dir} has no training lines in {METRICS_FILE}")
    timed = train[1:] or train

    def mean(key: str) -> float | None:
        values = [r[key] for r in train if key in r]
        return statistics.fmean(values) if values else None

    exact = any(r.get("split") == "note" for r in records)
    last = evals[-1] if evals else {}
    return {
        "steps": train[-1]["step"], "wall_time": train[-1]["wall_time"],
        "eval_" + primary: last.get(primary), "eval_loss": last.get("loss"),
        "sec_per_update": statistics.median(r["sec_per_update"] for r in timed),
        "retrieval_fraction": statistics.median(r.get("retrieval_fraction", 0.0) for r in timed),
        "recall": 1.0 if exact else mean("recall"),
        "mass_recovered": 1.0 if exact else mean("mass_recovered"),
        "grad_cosine": 1.0 if exact else mean("grad_cosine"),
        "audited": not exact,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_table(rows: dict[str, dict[str, Any]], primary: str) -> str:
    """A Markdown table, one row per run (retrieval setting, and seed when there are several)."""
    columns = ["steps", "eval_" + primary, "eval_loss", "sec_per_update", "retrieval_fraction", "recall",
               "mass_recovered", "grad_cosine", "wall_time"]
    return _markdown(["retrieval", *columns], [[f"`{label}`", *(_cell(row[c]) for c in columns)]
                                               for label, row in rows.items()])


def summarize_seeds(rows: dict[str, dict[str, Any]], primary: str) -> dict[str, dict[str, Any]]:
    """Per retrieval setting over its seeds: the final metric's mean/min/max and paired differences.

    ``rows`` values carry ``retrieval`` and ``seed``; the baseline of the differences is the first setting.
    """
    key = "eval_" + primary
    by_spec: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows.values():
        by_spec.setdefault(row["retrieval"], {})[row["seed"]] = row
    baseline = next(iter(by_spec.values()))
    summary = {}
    for spec, runs in by_spec.items():
        values = [r[key] for r in runs.values() if r[key] is not None]
        diffs = [r[key] - baseline[s][key] for s, r in runs.items()
                 if r[key] is not None and s in baseline and baseline[s][key] is not None]
        summary[spec] = {
            "seeds": sorted(runs), key + "_mean": statistics.fmean(values) if values else None,
            key + "_min": min(values, default=None), key + "_max": max(values, default=None),
            "paired_diff_mean": statistics.fmean(diffs) if diffs else None,
            "paired_diff_max_abs": max((abs(d) for d in diffs), default=None),
            "sec_per_update_mean": statistics.fmean(r["sec_per_update"] for r in runs.values()),
            **{name + "_mean": statistics.fmean(r[name] for r in runs.values()) if all(
                r[name] is not None for r in runs.values()) else None
               for name in ("recall", "mass_recovered", "grad_cosine")},
        }
    return summary


def format_summary_table(summary: dict[str, dict[str, Any]], primary: str) -> str:
    """A Markdown table of ``summarize_seeds``, one row per retrieval setting."""
    key = "eval_" + primary
    header = ["retrieval", "seeds", f"{key} mean", "min", "max", "paired diff mean", "paired diff max abs",
              "s/update", "recall", "grad cosine"]
    return _markdown(header, [[f"`{spec}`", str(len(s["seeds"])), _cell(s[key + "_mean"]), _cell(s[key + "_min"]),
                               _cell(s[key + "_max"]), _cell(s["paired_diff_mean"]), _cell(s["paired_diff_max_abs"]),
                               _cell(s["sec_per_update_mean"]), _cell(s["recall_mean"]), _cell(s["grad_cosine_mean"])]
                              for spec, s in summary.items()])


def run_compare(args: argparse.Namespace) -> int:
    """Train (or resume) one run per retrieval setting, then write the report."""
    from .cli import configs_from_args
    from .config import check_retrieval
    from .plots import plot_comparison
    from .train import format_summary, train
    from experiments.tasks import get_task

    specs = list(dict.fromkeys(args.retrieval))
    seeds = list(dict.fromkeys(args.seeds)) if args.seeds else None
    if seeds is not None and args.seed is not None:
        raise UserError("give either --seed or --seeds, not both")
    out = Path(args.out)
    args.retrieval, args.run_dir, args.resume = None, str(out), False
    model_cfg, train_cfg = configs_from_args(args)
    if seeds is not None and min(seeds) < 0:
        raise UserError(f"--seeds must be integers >= 0, got {seeds}")
    if model_cfg.model != "sab":
        raise UserError(f"compare needs --model sab (retrieval is a SAB option), got '{model_cfg.model}'")
    for spec in specs:
        check_retrieval(spec, model_cfg.scorer)
    names = [slug(s) for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"--retrieval settings {specs} map to the same run directory names {names}")
    primary = get_task(train_cfg.task).primary
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, str] = {}
    for seed in seeds or [train_cfg.seed]:
        for spec, name in zip(specs, names):
            label = spec if seeds is None else f"{spec} (seed {seed})"
            run_dir = out / "runs" / (name if seeds is None else f"{name}-seed{seed}")
            resume = (run_dir / CHECKPOINT_FILE).is_file()
            summary = train(model_cfg.replace(retrieval=spec), train_cfg.replace(seed=seed), run_dir,
                            resume=resume, progress=not args.no_progress)
            print(("resumed " if resume else "") + format_summary(summary))
            rows[label] = {"run_dir": str(run_dir), "retrieval": spec, "seed": seed,
                           **summarize_run(run_dir, primary)}
            curves[label], groups[label] = read_metrics(run_dir / METRICS_FILE), spec
    seed_text = f"seed {train_cfg.seed}" if seeds is None else f"seeds {', '.join(map(str, seeds))}"
    title = f"{train_cfg.task} T={train_cfg.T}, {seed_text}, {train_cfg.steps} updates"
    figure = plot_comparison(curves, out / "comparison.png", primary, title, groups)
    table = format_table(rows, primary)
    summary = summarize_seeds(rows, primary)
    config = json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    summary_text = ""
    if seeds is not None and len(seeds) > 1:
        summary_text = (f"Over seeds (paired differences: against `{specs[0]}` with the same seed):\n\n"
                        f"{format_summary_table(summary, primary)}\n\nRuns:\n\n")
    report = (f"# Retrieval comparison: {title}\n\nShared config (retrieval varies): `{config}`\n\n"
              f"{summary_text}{table}\n\n"
              f"Time per update excludes the audits; exact runs are not audited (recall and cosine 1 by "
              f"construction).\n\n![comparison]({figure.name})\n")
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "compare.json", json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")
    print(table)
    if summary_text:
        print(format_summary_table(summary, primary))
    print(f"wrote {out / 'report.md'}, {out / 'compare.json'}, {figure}")
    return 0
