"""``sab-mips compare``: the same SAB run (task, seed, budget) under several retrieval settings.

Each ``--retrieval`` factory string gets a run directory ``OUT/runs/<slug>`` trained by the one shared loop
(``sab_mips.training.train``); a directory that already holds a checkpoint is resumed instead (so an
interrupted or finished comparison is loaded, not retrained; its config must match). The report in
``OUT`` holds ``report.md`` (a Markdown table), ``compare.json`` and ``comparison.png`` (learning curves
and recall over training, overlaid).

Table columns, from each run's metrics.jsonl: final eval metrics, median seconds per update (audits
excluded, first update dropped as warm-up), median fraction of it spent in the index, mean recall@k_top
and attention mass recovered over the audited steps, mean gradient cosine (approximate vs exact).
Exact runs are not audited: their recall and cosine show "–" (exact by construction, not measured).

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
from pathlib import Path
from typing import Any

from ..devices import set_threads
from ..errors import UserError
from ..io import atomic_write_text
from ..model import SABConfig, check_retrieval
from ..plots import plot_comparison
from ..tasks import get_task
from ..training import TrainConfig, format_summary, train
from ..training.rundir import CHECKPOINT_FILE, METRICS_FILE, read_metrics
from ..training.summary import format_summary_table, format_table, slug, summarize_run, summarize_seeds
from .flags import TASK_SIZED, add_compute_flags, add_config_flags, explicit_values, merge_configs

HELP = "train one SAB run per retrieval setting and report them side by side"


def configure(parser: argparse.ArgumentParser) -> None:
    """Every train flag except --retrieval, which takes several values here."""
    add_config_flags(parser.add_argument_group("model (SABConfig)"), SABConfig, skip=(*TASK_SIZED, "retrieval"))
    add_config_flags(parser.add_argument_group("training (TrainConfig)"), TrainConfig)
    parser.add_argument("--retrieval", nargs="+", required=True, metavar="FACTORY_STRING",
                        help="retrieval settings to compare, e.g. exact \"faiss:HNSW32,efSearch=32\"")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="train every setting once per seed (replaces --seed) and summarise over seeds")
    parser.add_argument("--out", required=True, metavar="DIR", help="report directory (runs go to DIR/runs/)")
    parser.add_argument("--config", metavar="FILE", help="JSON config shared by all runs (as for train)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compute_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) one run per retrieval setting, then write the report."""
    set_threads(args.threads)
    specs = list(dict.fromkeys(args.retrieval))
    seeds = list(dict.fromkeys(args.seeds)) if args.seeds else None
    if seeds is not None and args.seed is not None:
        raise UserError("give either --seed or --seeds, not both")
    out = Path(args.out)
    explicit_model = {k: v for k, v in explicit_values(args, SABConfig).items() if k != "retrieval"}
    model_cfg, train_cfg = merge_configs(explicit_model, explicit_values(args, TrainConfig), args.config)
    if seeds is not None and min(seeds) < 0:
        raise UserError(f"--seeds must be integers >= 0, got {seeds}")
    if model_cfg.model != "sab":
        raise UserError(f"compare needs --model sab (retrieval is a SAB option), got '{model_cfg.model}'")
    for spec in specs:
        check_retrieval(spec, model_cfg.scorer)
    names = [slug(s) for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"--retrieval settings {specs} map to the same run directory names {names}")
    primary = get_task(train_cfg.task, train_cfg.data, train_cfg.permutation_seed).primary
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, str] = {}
    for seed in seeds or [train_cfg.seed]:
        for spec, name in zip(specs, names):
            label = spec if seeds is None else f"{spec} (seed {seed})"
            run_dir = out / "runs" / (name if seeds is None else f"{name}-seed{seed}")
            resume = (run_dir / CHECKPOINT_FILE).is_file()
            summary = train(model_cfg.replace(retrieval=spec), train_cfg.replace(seed=seed), run_dir,
                            resume=resume, progress=not args.no_progress, device=args.device)
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
              f"Time per update excludes the audits; exact runs are not audited: their recall and cosine show "
              f"\"–\" (exact by construction, not measured).\n\n![comparison]({figure.name})\n")
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "compare.json", json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")
    print(table)
    if summary_text:
        print(format_summary_table(summary, primary))
    print(f"wrote {out / 'report.md'}, {out / 'compare.json'}, {figure}")
    return 0
