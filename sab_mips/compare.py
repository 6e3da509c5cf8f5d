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


def format_table(rows: dict[str, dict[str, Any]], primary: str) -> str:
    """A Markdown table, one row per retrieval setting."""
    columns = ["steps", "eval_" + primary, "eval_loss", "sec_per_update", "retrieval_fraction", "recall",
               "mass_recovered", "grad_cosine", "wall_time"]
    lines = ["| retrieval | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        lines.append(f"| `{label}` | " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    """Train (or resume) one run per retrieval setting, then write the report."""
    from .cli import configs_from_args
    from .config import check_retrieval
    from .plots import plot_comparison
    from .train import format_summary, train
    from experiments.tasks import get_task

    specs = list(dict.fromkeys(args.retrieval))
    out = Path(args.out)
    args.retrieval, args.run_dir, args.resume = None, str(out), False
    model_cfg, train_cfg = configs_from_args(args)
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
    for spec, name in zip(specs, names):
        run_dir = out / "runs" / name
        resume = (run_dir / CHECKPOINT_FILE).is_file()
        summary = train(model_cfg.replace(retrieval=spec), train_cfg, run_dir, resume=resume,
                        progress=not args.no_progress)
        print(("resumed " if resume else "") + format_summary(summary))
        rows[spec] = {"run_dir": str(run_dir), **summarize_run(run_dir, primary)}
        curves[spec] = read_metrics(run_dir / METRICS_FILE)
    title = f"{train_cfg.task} T={train_cfg.T}, seed {train_cfg.seed}, {train_cfg.steps} updates"
    figure = plot_comparison(curves, out / "comparison.png", primary, title)
    table = format_table(rows, primary)
    config = json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    report = (f"# Retrieval comparison: {title}\n\nShared config (retrieval varies): `{config}`\n\n{table}\n\n"
              f"Time per update excludes the audits; exact runs are not audited (recall and cosine 1 by "
              f"construction).\n\n![comparison]({figure.name})\n")
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=2) + "\n")
    print(table)
    print(f"wrote {out / 'report.md'}, {out / 'compare.json'}, {figure}")
    return 0
