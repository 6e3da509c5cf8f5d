"""Summaries of finished runs from their metrics.jsonl, and Markdown tables of them (``sab-mips compare``).

``summarize_run`` gives one row per run: final eval metrics, median seconds per update (audits excluded,
first update dropped as warm-up), median fraction of it spent in the index, mean recall@k_top and
attention mass recovered over the audited steps (and recall over the steps the task scores,
``scored_recall``), mean gradient cosine (approximate vs exact). Exact runs (their log's note line says
the audits were skipped) have no recall, mass or cosine: None, shown as "–". They are exact by
construction, but nothing was measured, and a missing value is never shown as a perfect one.
``summarize_seeds`` groups
rows by retrieval setting: mean, min and max of the final metric and the paired difference to the first
setting's run *of the same seed*.

Example:
    >>> row = summarize_run("runs/copy100", primary="accuracy")
    >>> row["eval_accuracy"], row["sec_per_update"]
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from ..errors import UserError
from .rundir import METRICS_FILE, read_metrics


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

    audited = not any(r.get("split") == "note" for r in records)  # the note says why audits were skipped
    last = evals[-1] if evals else {}
    return {
        "steps": train[-1]["step"], "wall_time": train[-1]["wall_time"],
        "eval_" + primary: last.get(primary), "eval_loss": last.get("loss"),
        "sec_per_update": statistics.median(r["sec_per_update"] for r in timed),
        "retrieval_fraction": statistics.median(r.get("retrieval_fraction", 0.0) for r in timed),
        # None where the run logged no such value (an exact run is not audited): never a made-up 1
        "recall": mean("recall"), "scored_recall": mean("scored_recall"),
        "mass_recovered": mean("mass_recovered"), "grad_cosine": mean("grad_cosine"),
        "audited": audited,
    }


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_table(rows: dict[str, dict[str, Any]], primary: str) -> str:
    """A Markdown table, one row per run (retrieval setting, and seed when there are several)."""
    columns = ["steps", "eval_" + primary, "eval_loss", "sec_per_update", "retrieval_fraction", "recall",
               "scored_recall", "mass_recovered", "grad_cosine", "wall_time"]
    return markdown_table(["retrieval", *columns], [[f"`{label}`", *(cell(row[c]) for c in columns)]
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
               for name in ("recall", "scored_recall", "mass_recovered", "grad_cosine")},
        }
    return summary


def format_summary_table(summary: dict[str, dict[str, Any]], primary: str) -> str:
    """A Markdown table of ``summarize_seeds``, one row per retrieval setting."""
    key = "eval_" + primary
    header = ["retrieval", "seeds", f"{key} mean", "min", "max", "paired diff mean", "paired diff max abs",
              "s/update", "recall", "scored recall", "grad cosine"]
    return markdown_table(header, [[f"`{spec}`", str(len(s["seeds"])), cell(s[key + "_mean"]), cell(s[key + "_min"]),
                               cell(s[key + "_max"]), cell(s["paired_diff_mean"]), cell(s["paired_diff_max_abs"]),
                               cell(s["sec_per_update_mean"]), cell(s["recall_mean"]), cell(s["scored_recall_mean"]),
                               cell(s["grad_cosine_mean"])]
                              for spec, s in summary.items()])


