"""PNG figures: learning curves from metrics.jsonl, an attention map from one forward pass, the retrieval
audits of a SAB-MIPS run, several runs overlaid (``sab-mips compare``), a tuning sweep (``sab-mips tune``)
recall against search time (``sab-mips bench retrieval``), a run evaluated at other lengths (``sab-mips eval``),
an image task's attention over the picture, and streaming runs (task text): bits per character, time per step against memory size, recall, and how far
back the attention goes.

Matplotlib runs on the Agg backend (files only, no screen), so plotting works on headless machines and CI.

Example:
    >>> plot_learning_curves(read_metrics("runs/x/metrics.jsonl"), "runs/x/curves.png", primary="accuracy")
    >>> plot_attention_map(record.attention_map(b=0), "runs/x/attention.png", title="copy T=20")
    >>> plot_retrieval(read_metrics("runs/x/metrics.jsonl"), "runs/x/retrieval.png")
"""
from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write  # noqa: E402


def _running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (shorter at the start), to read noisy curves."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def _finish(fig, axes, path: str | Path, title: str, dpi: int, legend_size: float | None = None) -> Path:
    """Grid and legend on every panel, the title, then save the figure to ``path`` and close it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _save(fig, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG (atomically: a reader never sees half a file) and close it."""
    path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return path


def plot_learning_curves(records: list[dict[str, Any]], path: str | Path, primary: str, title: str = "") -> Path:
    """Two panels: training loss (raw and running mean) vs update, and the eval ``primary`` metric vs update (one line per eval T).

    ``records`` are metrics.jsonl lines; train lines have ``split == "train"``, eval lines ``"eval"``.
    """
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    evals = [r for r in records if r.get("split") == "eval" and primary in r]
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.35, color="C0")
        ax_loss.plot(steps, _running_mean(losses, max(1, len(losses) // 50)), lw=1.2, color="C0", label="train")
    for i, T in enumerate(sorted({r.get("T") for r in evals}, key=lambda t: (t is None, t))):
        style = dict(marker="o", ms=3, color=f"C{i + 1}", label=f"eval T={T}")  # C0 is the train curve
        points = sorted((r["step"], r[primary]) for r in evals if r.get("T") == T)
        ax_eval.plot([s for s, _ in points], [v for _, v in points], **style)
        eval_loss = sorted((r["step"], r["loss"]) for r in evals if r.get("T") == T and "loss" in r)
        if eval_loss:
            ax_loss.plot([s for s, _ in eval_loss], [v for _, v in eval_loss], **style)
    ax_loss.set(xlabel="update", ylabel="loss", title="loss")
    ax_loss.set_yscale("log")
    ax_eval.set(xlabel="update", ylabel=primary, title=f"eval {primary}")
    return _finish(fig, (ax_loss, ax_eval), path, title, dpi=110)


def plot_diagnostics(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Five panels from a run's train lines: gradient norm before clipping, how far each update moved the
    weights, the smallest gap sum Σ(a − δ) of the sparsifier, the largest slot norm, and the share of
    attention on slots older than k_trunc."""
    panels = (("grad_norm", "gradient norm before clipping", True), ("update_norm", "update size |Δθ|", True),
              ("min_gap_sum", "smallest gap sum Σ(a − δ)", True), ("max_slot_norm", "largest slot norm", False),
              ("old_attention", "attention on slots > k_trunc old", False))
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    for ax, (key, label, log) in zip(axes, panels):
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, lw=0.5, alpha=0.35, color="C0")
            ax.plot(steps, _running_mean(values, max(1, len(values) // 50)), lw=1.2, color="C0")
            if log and min(values) > 0:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not logged by this model", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="update", title=label)
    return _finish(fig, axes, path, title, dpi=100)


def plot_attention_map(attention: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Heat map of a (L, L) attention matrix: row t = attending step, column u = step that wrote the slot."""
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(attention.detach().cpu().numpy(), cmap="viridis", origin="upper", aspect="auto",
                      interpolation="nearest", vmin=0.0)
    ax.set(xlabel="slot written at step u", ylabel="attending step t", title=title or "attention weights")
    fig.colorbar(image, ax=ax, label="weight")
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def plot_pixel_attention(image: torch.Tensor, weights: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """An image (R, C) beside the attention its last step paid to each pixel (R, C): where, in the picture,
    the slots it read were written (the weight of the slot written at the step that read that pixel; 0 where
    no attended slot was written), drawn over a faint copy of the image."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(image.detach().cpu().numpy(), cmap="gray", interpolation="nearest")
    axes[0].set_title("image")
    axes[1].imshow(image.detach().cpu().numpy(), cmap="gray", interpolation="nearest", alpha=0.35)
    values = weights.detach().cpu().numpy()
    masked = np.ma.masked_where(values <= 0, values)  # pixels that wrote no attended slot show the image
    shown = axes[1].imshow(masked, cmap="plasma", interpolation="nearest", vmin=0.0)
    axes[1].set_title("attention of the last step, by the pixel\nread at the step that wrote each slot", fontsize=9)
    fig.colorbar(shown, ax=axes[1], label="weight")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _series(records: list[dict[str, Any]], key: str, split: str = "train") -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    return [s for s, _ in points], [v for _, v in points]


def _skipped(ax, records: list[dict[str, Any]]) -> None:
    notes = [textwrap.fill(r["message"], 40) for r in records if r.get("split") == "note"]
    ax.text(0.5, 0.5, "\n".join(notes) or "no audits logged", ha="center", va="center",
            fontsize=8, transform=ax.transAxes)


def _near_one_axis(ax) -> None:
    """A y-axis for fractions and cosines that sit at or near 1: at least [0.98, 1.002], plain tick labels.

    Without it, values that only differ by rounding (mass recovered 1 − 3·10⁻⁷) fill the panel and read as
    swings under an offset label.
    """
    low, high = ax.get_ylim()
    if high - low < 0.02:
        ax.set_ylim(min(low, 0.98), max(high, 1.0) + 0.002)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def plot_retrieval(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Three panels from a SAB-MIPS run's train lines: recall@k_top (sampled steps, and the steps the task
    scores) and attention mass recovered, gradient cosine (approximate vs exact candidates), and the fraction
    of each update spent in the index."""
    fig, (ax_recall, ax_cos, ax_time) = plt.subplots(1, 3, figsize=(15, 4))
    lines = (("recall", "recall@k_top", "C0"), ("mass_recovered", "mass recovered", "C1"),
             ("scored_recall", "recall@k_top, steps the task scores", "C4"))
    for key, label, color in lines:
        steps, values = _series(records, key)
        if steps:
            ax_recall.plot(steps, values, lw=0.6, alpha=0.35, color=color)
            ax_recall.plot(steps, _running_mean(values, max(1, len(values) // 20)), lw=1.2, color=color, label=label)
    steps, values = _series(records, "grad_cosine")
    if steps:
        ax_cos.plot(steps, values, marker="o", ms=3, color="C2")
    steps, values = _series(records, "retrieval_fraction")
    if steps:
        ax_time.plot(steps, values, lw=0.6, alpha=0.35, color="C3")
        ax_time.plot(steps, _running_mean(values, max(1, len(values) // 20)), lw=1.2, color="C3")
    for ax in (ax_recall, ax_cos):
        if not ax.lines:
            _skipped(ax, records)
        else:
            _near_one_axis(ax)
    ax_recall.set(xlabel="update", ylabel="fraction", title="retrieval vs exact search (audited steps)")
    ax_cos.set(xlabel="update", ylabel="cosine", title="gradient cosine, approximate vs exact")
    ax_time.set(xlabel="update", ylabel="fraction of update time", title="time in index search + add")
    return _finish(fig, (ax_recall, ax_cos, ax_time), path, title, dpi=100)


def plot_comparison(runs: dict[str, list[dict[str, Any]]], path: str | Path, primary: str, title: str = "",
                    groups: dict[str, str] | None = None) -> Path:
    """Runs of one task overlaid (label -> metrics.jsonl lines): training loss, eval ``primary``, recall.

    ``groups`` (label -> group, e.g. the retrieval setting of runs with several seeds) gives the runs of a
    group one colour and tells them apart by line style; without it every run has its own colour.
    """
    fig, (ax_loss, ax_eval, ax_recall) = plt.subplots(1, 3, figsize=(15, 4))
    groups = groups or {label: label for label in runs}
    group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups.values()))}
    seen: dict[str, int] = {}
    for label, records in runs.items():
        group = groups[label]
        color, style = f"C{group_ids[group] % 10}", ("-", "--", ":", "-.")[seen.get(group, 0) % 4]
        seen[group] = seen.get(group, 0) + 1
        line = dict(color=color, ls=style, label=label)
        steps, losses = _series(records, "loss")
        if steps:
            ax_loss.plot(steps, _running_mean(losses, max(1, len(losses) // 25)), lw=1.2, **line)
        # the run's own evaluations (at its eval_T); an `eval` of the run at another length (source) is not
        # a point of its learning curve
        steps, values = _series([r for r in records if "source" not in r], primary, "eval")
        if steps:
            ax_eval.plot(steps, values, marker="o", ms=3, **line)
        steps, values = _series(records, "recall")
        if steps:
            ax_recall.plot(steps, _running_mean(values, max(1, len(values) // 20)), lw=1.2, **line)
    ax_loss.set(xlabel="update", ylabel="loss (running mean)", title="training loss")
    ax_loss.set_yscale("log")
    ax_eval.set(xlabel="update", ylabel=primary, title=f"eval {primary}")
    ax_recall.set(xlabel="update", ylabel="recall@k_top", title="retrieval recall over training (exact runs: not audited)")
    return _finish(fig, (ax_loss, ax_eval, ax_recall), path, title, dpi=100, legend_size=7)


def plot_tuning(rows: list[dict[str, Any]], frontier: list[dict[str, Any]], best: dict[str, Any] | None,
                baseline: dict[str, Any], target: float, title: str, path: str | Path) -> Path:
    """Recall@k_top against search time per query of every tuned setting, its Pareto frontier and the
    recommended setting (rows of ``offline_retrieval.tuning.measure``)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["ms_per_query"] for r in rows], [r["recall"] for r in rows], s=14, color="0.6", label="settings")
    ax.plot([r["ms_per_query"] for r in frontier], [r["recall"] for r in frontier], "o-", color="C0", label="Pareto frontier")
    ax.axhline(target, color="C3", lw=0.8, ls="--", label=f"target recall {target}")
    ax.axvline(baseline["ms_per_query"], color="k", lw=0.8, ls=":", label="exact search")
    if best is not None:
        ax.plot([best["ms_per_query"]], [best["recall"]], "*", ms=14, color="C1", label="recommended")
    ax.set(xscale="log", xlabel="search time per query (ms)", ylabel="recall@k_top", title=title)
    return _finish(fig, (ax,), path, "", dpi=100, legend_size=7)


def plot_recall_vs_time(rows: list[dict[str, Any]], dataset: str, path: str | Path) -> Path:
    """One point per (index, N) of the retrieval benchmark on ``dataset``: recall against search time relative
    to exact search; markers by N."""
    fig, ax = plt.subplots(figsize=(14, 6))
    done = [r for r in rows if r["dataset"] == dataset and "recall" in r and r["index"] != "exact"]
    markers = dict(zip(sorted({r["N"] for r in done}), "os^Dv*"))
    for i, name in enumerate(sorted({r["index"] for r in done})):
        pts = [r for r in done if r["index"] == name]
        for r in pts:
            ax.scatter(r["ratio"], r["recall"], color=plt.get_cmap("tab20")(i % 20), marker=markers[r["N"]],
                       label=name if r is pts[0] else None)
    ax.axvline(1.0, color="black", linestyle="--", label="exact (time ratio 1, recall 1)")
    ax.set_xscale("log")
    ax.set_xlabel("search time / exact search time (same N, same run)")
    ax.set_ylabel("recall@k")
    ax.set_title(f"{dataset}: recall vs time; markers by N: " + ", ".join(f"{m}={n:g}" for n, m in markers.items()))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def transfer_evals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations ``sab-mips eval`` added to a run (eval lines with a ``source``), not its own."""
    return [r for r in records if r.get("split") == "eval" and "source" in r]


def plot_transfer(records: list[dict[str, Any]], path: str | Path, primary: str, own_retrieval: str,
                  title: str = "") -> Path:
    """Three panels from the evaluations ``sab-mips eval`` added to a run (lines with a ``source``): the
    ``primary`` metric, milliseconds per step and recall@k_top against T (log scale; dashed: the recall at
    the steps the task scores), one line per retrieval (``own_retrieval`` for evaluations with the run's own
    index). Several evaluations at one (retrieval, T) are all drawn; the line goes through their mean.
    Evaluations with another batch size get their own line (time per step depends on it)."""
    evals = [r for r in transfer_evals(records) if primary in r]

    def group(r: dict[str, Any]) -> str:
        return r.get("retrieval", own_retrieval) + (f", B={r['batch_size']}" if "batch_size" in r else "")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = ((primary, primary), ("ms_per_step", "ms per time step"),
              ("recall", "recall@k_top vs exact (dashed: scored steps)"))
    curves = [(ax, key, "-") for ax, (key, _) in zip(axes, panels)] + [(axes[2], "scored_recall", "--")]
    for i, label in enumerate(dict.fromkeys(group(r) for r in evals)):
        mine = [r for r in evals if group(r) == label]
        for ax, key, style in curves:
            points = sorted((r["T"], r[key]) for r in mine if key in r)
            if not points:
                continue
            by_length: dict[int, list[float]] = {}
            for T, v in points:
                by_length.setdefault(T, []).append(v)
            ax.plot(list(by_length), [statistics.fmean(v) for v in by_length.values()], style, color=f"C{i % 10}",
                    label=label if style == "-" else None)
            ax.plot([T for T, _ in points], [v for _, v in points], "o", ms=4, color=f"C{i % 10}")
    for ax, (key, label) in zip(axes, panels):
        ax.set(xscale="log", xlabel="T (evaluation length)", ylabel=label, title=label)
        if not ax.lines:
            ax.text(0.5, 0.5, f"no evaluation measured {key}", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, axes, path, title, dpi=100, legend_size=7)


def plot_long_sequences(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Two log-log panels from ``sab-mips bench long``: milliseconds per time step and peak memory against
    T, one line per model (rows that were not run are left out)."""
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        done = sorted((r for r in rows if r["model"] == model and "seconds" in r), key=lambda r: r["T"])
        if done:
            style = dict(marker="o", color=f"C{i}", label=model)
            ax_time.plot([r["T"] for r in done], [r["ms_per_step"] for r in done], **style)
            ax_mem.plot([r["T"] for r in done], [r["peak_gib"] for r in done], **style)
    ax_time.set(xscale="log", yscale="log", xlabel="T (time steps)", ylabel="ms per time step", title="time per step")
    ax_mem.set(xscale="log", yscale="log", xlabel="T (time steps)", ylabel="peak resident memory (GiB)",
               title="peak memory of one update")
    return _finish(fig, (ax_time, ax_mem), path, "one training update, full sequence", dpi=100)


def plot_streams(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "", smooth: int = 50) -> Path:
    """Streaming runs (task text) overlaid, one line per run (``runs``: label -> metrics.jsonl lines): training
    bits per character (running mean over ``smooth`` windows) against updates and against wall-clock time,
    time per step against the slots each stream holds, and the audited recall against today's keys."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (by_step, by_time), (by_slots, recall) = axes
    for label, records in runs.items():
        train = [r for r in records if r.get("split") == "train"]
        if not train:
            continue
        bpc = _running_mean([r["bpc"] for r in train], smooth)
        line, = by_step.plot([r["step"] for r in train], bpc, label=label, lw=1)
        by_time.plot([r["wall_time"] / 60 for r in train], bpc, color=line.get_color(), lw=1, label=label)
        if any(r["memory_slots"] for r in train):
            by_slots.plot([r["memory_slots"] for r in train], _running_mean([r["ms_per_step"] for r in train], smooth),
                          color=line.get_color(), lw=1, label=label)
        audited = [r for r in train if "recall" in r]
        if audited:
            recall.plot([r["step"] for r in audited], [r["recall"] for r in audited], ".-", color=line.get_color(),
                        ms=3, lw=0.5, label=label)
    by_step.set(xlabel="update", ylabel=f"training bits per character (mean of {smooth})")
    by_time.set(xlabel="wall-clock minutes", ylabel=f"training bits per character (mean of {smooth})")
    by_slots.set(xlabel="memory slots per stream", ylabel=f"ms per step (mean of {smooth})")
    recall.set(xlabel="update", ylabel="audited recall@k_top (today's keys)")
    return _finish(fig, axes.ravel(), path, title, dpi=110)


def plot_attention_distances(histograms: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """The share of attention weight by how far back the attended slot was written (log2 bins: bin i holds
    distances in [2^i, 2^(i+1))), one bar group per label (e.g. ``sab-mips eval`` of several text runs)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(histograms))
    for n, (label, shares) in enumerate(histograms.items()):
        ax.bar([i + n * width for i in range(len(shares))], shares, width=width, label=label)
    bins = len(next(iter(histograms.values()), []))
    ax.set_xticks(range(bins), [f"2^{i}" for i in range(bins)], rotation=60, fontsize=8)
    ax.set(xlabel="steps back to the attended slot (lower edge of the bin)", ylabel="share of attention weight")
    return _finish(fig, [ax], path, title, dpi=110)
