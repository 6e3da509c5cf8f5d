"""``sab-mips plot``: learning curves, retrieval audits and an attention map of a run, as PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..plots import (plot_attention_distances, plot_attention_map, plot_diagnostics, plot_learning_curves,
                     plot_pixel_attention, plot_retrieval, plot_streams, plot_transfer, transfer_evals)
from ..tasks import PixelTask
from ..training import load_run
from ..training.rundir import METRICS_FILE, read_metrics, saved_task

HELP = "learning curves and attention map as PNG"
MAX_MAP_T = 1000  # the attention map is a dense (T, T) matrix: longer runs are drawn at this length
DESCRIPTION = ("Write learning_curves.png, diagnostics.png (gradient norm; for attention models also gap sums, slot "
               "norms, long-range attention), attention.png (models with attention), retrieval.png (SAB-MIPS) and "
               "transfer.png (the run evaluated at other lengths by sab-mips eval: accuracy, time per step and "
               "recall against T); for the image tasks pixel_attention.png (which pixels of a validation image the "
               "last step attends to).")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR", help="run directory")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: the run directory)")


def run(args: argparse.Namespace) -> int:
    if saved_task(args.run) == "text":
        return run_text(args)
    model, task, model_cfg, train_cfg, state = load_run(args.run)
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{task.name} T={train_cfg.T}, model {model_cfg.model}, step {state['step']}"
    records = read_metrics(Path(args.run) / METRICS_FILE)
    print(f"wrote {plot_learning_curves(records, out / 'learning_curves.png', task.primary, title)}")
    print(f"wrote {plot_diagnostics(records, out / 'diagnostics.png', title)}")
    if any("retrieval_seconds" in r for r in records):
        print(f"wrote {plot_retrieval(records, out / 'retrieval.png', f'{title}, retrieval {model_cfg.retrieval}')}")
    own_T = train_cfg.eval_T or train_cfg.T
    if any(r.get("T") != own_T for r in transfer_evals(records)):
        transfer = plot_transfer(records, out / "transfer.png", task.primary, model_cfg.retrieval,
                                 f"{title}: evaluated at other lengths")
        print(f"wrote {transfer}")
    T = min(own_T, MAX_MAP_T)
    if T < own_T:
        print(f"note: the attention map is drawn at T={T}: a (T, T) map of the run's T={own_T} would not fit in memory")
    x, _ = task.eval_batch(T, 1, 0, train_cfg.seed)  # the first evaluation sequence (image: validation image 0)
    model.eval()
    with torch.no_grad():
        _, record = model(x, return_attention=True)
    if record is None:
        print(f"note: model '{model_cfg.model}' has no attention; attention map skipped")
    else:
        attention = record.attention_map(b=0, T=x.shape[1])
        print(f"wrote {plot_attention_map(attention, out / 'attention.png', f'attention, {title}, eval T={T}')}")
        if isinstance(task, PixelTask):
            print(f"wrote {pixel_attention(task, attention[-1], out / 'pixel_attention.png', title)}")
    return 0


def pixel_attention(task: PixelTask, last_row: torch.Tensor, path: Path, title: str) -> Path:
    """``pixel_attention.png``: validation image 0 and the attention its last step paid to each of its pixels
    (step u read pixel ``task.order[u]``, so the weights are put back in the picture's layout)."""
    images = task.images
    split = images.splits[task.eval_split]
    weights = torch.zeros(images.pixel_count)
    weights[task.order] = last_row.detach().float().cpu()
    rows, cols = images.shape
    label = int(split.labels[0])
    return plot_pixel_attention(split.pixels[0].view(rows, cols).float(), weights.view(rows, cols), path,
                                f"{title}: {task.eval_split} image 0 (class {label})")


def run_text(args: argparse.Namespace) -> int:
    """``plot`` of a text run: stream.png (bits per character, time per step against memory, recall) and,
    once ``sab-mips eval`` recorded where the attention went, attention_distances.png."""
    records = read_metrics(Path(args.run) / METRICS_FILE)
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot_streams({Path(args.run).name: records}, out / 'stream.png', title=str(args.run))}")
    evals = [r for r in records if "attention_distance_hist" in r]
    if evals:
        last = evals[-1]
        label = f"{last.get('data', 'valid')}, step {last['step']}"
        path = plot_attention_distances({label: last["attention_distance_hist"]}, out / "attention_distances.png",
                                        title=f"{args.run}: old_attention={last['old_attention']:.3f}")
        print(f"wrote {path}")
    return 0

