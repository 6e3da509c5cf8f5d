"""The one training loop shared by every model and task.

Reproducibility: parameters are initialised from ``TrainConfig.seed``; training batch i is drawn from a
``torch.Generator`` seeded with a hash of (seed, "train", i), evaluation batch j from (seed, "eval", j).
The data therefore never depend on how many updates ran in this process, and a run resumed from a
checkpoint at step s continues exactly as the uninterrupted run would have (same parameters, same metrics;
only the timing fields differ).

Resume rule (``resume=True``): the run directory must hold a checkpoint; the requested configs must equal the
saved ones except those in ``EXTENDABLE`` (``steps`` and ``time_budget``, to extend or shorten the run, and
the audit intervals, which do not alter the updates); any other difference is an error that names the
fields. Metric lines logged after the checkpoint's step (by a run killed between checkpoints) are dropped.
``time_budget`` counts wall time over all sessions of a run.

Warm start (``TrainConfig.init_from``): a new run takes the weights and Adam state of another run's
checkpoint (``warm_start``), e.g. to continue a trained model at a longer T or with another retrieval
index; its own step count, data stream and learning rate start fresh.

Example:
    >>> summary = train(SABConfig(model="lstm", hidden_size=16), TrainConfig(task="copy", T=5, steps=10),
    ...                 "runs/demo", progress=False)
    >>> summary["eval"]["accuracy"]
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from experiments.tasks import Task, get_task

from indexes import make_index

from .audit import exact_gradient_cosine, overridden
from .checkpoint import (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MetricsLog, atomic_write,
                         load_checkpoint, read_metrics, save_checkpoint, save_config, truncate_metrics)
from .config import SABConfig, TrainConfig
from .errors import UserError
from .models import build_model

# TrainConfig fields a resumed run may change: budgets, and measurements that do not alter the updates
EXTENDABLE = ("steps", "time_budget", "audit_every", "grad_cosine_every")


def batch_generator(seed: int, index: int, stream: str) -> torch.Generator:
    """A generator whose state is a pure function of (seed, stream, index); streams: train, eval, memories."""
    digest = hashlib.sha256(f"{stream}:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def build(model_cfg: SABConfig, train_cfg: TrainConfig) -> tuple[torch.nn.Module, Task, SABConfig]:
    """The task, and the model with parameters initialised from the seed; input/output sizes come from the task."""
    task = get_task(train_cfg.task)
    task.check_T(train_cfg.T)
    if train_cfg.eval_T is not None:
        task.check_T(train_cfg.eval_T)
    model_cfg = model_cfg.replace(input_size=task.input_size, output_size=task.output_size)
    torch.manual_seed(train_cfg.seed)
    return build_model(model_cfg), task, model_cfg


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, T: int, batches: int, seed: int, batch_size: int) -> dict[str, float]:
    """Mean task metrics over ``batches`` fixed batches of the eval stream of ``seed``, at length T.

    The same (seed, T) always gives the same batches, so evaluations along a run are comparable.
    """
    task.check_T(T)
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for j in range(batches):
        x, y = task.make_batch(T, batch_size, batch_generator(seed, j, "eval"))
        for name, value in task.metrics(model(x), y).items():
            totals[name] = totals.get(name, 0.0) + value
    model.train(was_training)
    return {name: value / batches for name, value in totals.items()}


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, Task, SABConfig, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory: (model, task, model_cfg, train_cfg, checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    model_cfg = SABConfig.from_dict(state["model_config"])
    train_cfg = TrainConfig.from_dict(state["train_config"])
    model, task, _ = build(model_cfg, train_cfg)
    model.load_state_dict(state["model_state"])
    return model, task, model_cfg, train_cfg, state


def _differences(saved: dict[str, Any], requested: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}={saved.get(k)!r} (saved) vs {requested.get(k)!r} (requested)"
            for k in sorted(set(saved) | set(requested)) if k not in ignore and saved.get(k) != requested.get(k)]


def _check_resume(state: dict[str, Any], model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: Path) -> None:
    # Through the dataclasses: fields added since the run was saved take their defaults, not "missing".
    saved_model = SABConfig.from_dict(state["model_config"]).to_dict()
    saved_train = TrainConfig.from_dict(state["train_config"]).to_dict()
    diffs = (_differences(saved_model, model_cfg.to_dict())
             + _differences(saved_train, train_cfg.to_dict(), EXTENDABLE))
    if diffs:
        raise UserError(f"run directory {run_dir} holds a different config: {'; '.join(diffs)} "
                        f"(only {' and '.join(EXTENDABLE)} may change on --resume)")


# SABConfig fields that decide the parameter shapes: a warm start must match them (the rest may differ).
SHAPE_FIELDS = ("model", "input_size", "output_size", "hidden_size", "scorer", "attn_dim")


def warm_start(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_cfg: SABConfig, lr: float,
               source: str | Path) -> None:
    """Load the weights and Adam state of the run (or checkpoint file) ``source`` into a fresh run.

    The learning rate stays this run's ``lr``; everything that does not shape a parameter (T, retrieval,
    k_top, ...) may differ from the source run.
    """
    source = Path(source)
    state = load_checkpoint(source / CHECKPOINT_FILE if source.is_dir() else source)
    saved = SABConfig.from_dict(state["model_config"]).to_dict()
    diffs = _differences({k: saved[k] for k in SHAPE_FIELDS}, {k: model_cfg.to_dict()[k] for k in SHAPE_FIELDS})
    if diffs:
        raise UserError(f"--init-from {source}: its model has other parameter shapes: {'; '.join(diffs)}")
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    for group in optimizer.param_groups:
        group["lr"] = lr


def dump_memories(model: torch.nn.Module, task: Task, train_cfg: TrainConfig, path: str | Path,
                    count: int) -> dict[str, int]:
    """Save the MIPS problem of ``model`` on fresh batches at the training T, for retrieval benchmarks.

    Runs ``model.collect_memories`` on batches of the "memories" stream until at least ``count`` keys are
    pooled, then writes ``path`` (.npz, atomically) with ``keys`` float32 (M, d), k_i = W_k m_i,
    ``queries`` float32 (Q, d), q = W_q ĥ / sqrt(d_k), ``dim`` (d = attn_dim), ``T`` and ``task``.
    Returns {"keys": M, "queries": Q}.
    """
    if not hasattr(model, "collect_memories"):
        raise UserError(f"--record-memories needs a model with memory slots (collect_memories); "
                        f"{type(model).__name__} has none")
    keys: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    n_keys, index = 0, 0
    while n_keys < count:
        x, _ = task.make_batch(train_cfg.T, train_cfg.batch_size, batch_generator(train_cfg.seed, index, "memories"))
        memories = model.collect_memories(x)  # keys (B, N, d), queries (S, B, d)
        k, q = memories["keys"], memories["queries"]
        if k.shape[1] == 0:
            raise UserError(f"the model writes no memory slots at T={train_cfg.T}; nothing to record")
        keys.append(k.reshape(-1, k.shape[-1]).float().numpy())
        queries.append(q.reshape(-1, q.shape[-1]).float().numpy())
        n_keys += keys[-1].shape[0]
        index += 1
    arrays = dict(keys=np.concatenate(keys), queries=np.concatenate(queries), dim=np.int64(keys[0].shape[1]),
                  T=np.int64(train_cfg.T), task=np.str_(task.name))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return {"keys": int(arrays["keys"].shape[0]), "queries": int(arrays["queries"].shape[0])}


def _retrieves(model: torch.nn.Module) -> bool:
    """Whether the model selects slots by retrieval (SAB; the dense baseline reads every slot)."""
    return hasattr(model, "last_retrieval") and model.config.model == "sab"


def retrieval_note(model: torch.nn.Module) -> str | None:
    """Why retrieval audits are skipped for this model (None: they run, or the model does not retrieve)."""
    if not _retrieves(model):
        return None
    if model.config.scorer != "dot":
        return f"retrieval audits skipped: scorer {model.config.scorer!r} scans every slot (exact)"
    if make_index(model.retrieval).exact:
        return (f"retrieval audits skipped: retrieval {model.retrieval!r} is exact "
                f"(recall 1 and gradient cosine 1 by construction)")
    return None


def _train_forward(model: torch.nn.Module, x: torch.Tensor, audit_every: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Logits of a training pass, and the retrieval time / audit metrics of SAB models (else {})."""
    if not _retrieves(model):
        return model(x), {}
    with overridden(model, audit_every=audit_every):
        logits = model(x)
    return logits, model.last_retrieval.as_metrics()


def train(model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True, record_memories: str | Path | None = None,
          record_count: int = 100_000) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; return a summary dict (see ``format_summary``).

    Writes config.json, appends to metrics.jsonl, checkpoints every ``checkpoint_every`` updates and at the
    end; stops after ``steps`` updates or ``time_budget`` seconds. With ``record_memories`` (an .npz path),
    afterwards dumps memory slots for retrieval benchmarks (``dump_memories``).
    """
    run_dir = Path(run_dir)
    model, task, model_cfg = build(model_cfg, train_cfg)
    if record_memories is not None and not hasattr(model, "collect_memories"):
        raise UserError(f"--record-memories needs a model with memory slots; model '{model_cfg.model}' has none")
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    step, elapsed = 0, 0.0
    last_eval_record: dict[str, Any] | None = None
    if resume:
        if not checkpoint_path.is_file():
            raise UserError(f"cannot resume: no checkpoint in {run_dir}")
        state = load_checkpoint(checkpoint_path)
        _check_resume(state, model_cfg, train_cfg, run_dir)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        if state.get("rng_state") is not None:
            torch.set_rng_state(state["rng_state"])
        truncate_metrics(run_dir / METRICS_FILE, step)
        done = [r for r in read_metrics(run_dir / METRICS_FILE)
                if r.get("split") == "eval" and r.get("step") == step and "source" not in r]
        if done:  # a finished run resumed only to record memories keeps its final evaluation
            last_eval_record = done[-1]
    else:
        if checkpoint_path.exists():
            raise UserError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                            f"or choose another --run-dir")
        if train_cfg.init_from is not None:
            warm_start(model, optimizer, model_cfg, train_cfg.lr, train_cfg.init_from)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    save_config(run_dir, model_cfg.to_dict(), train_cfg.to_dict())

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "step": step,
            "elapsed": elapsed, "skipped_updates": skipped,
            "model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
            "rng_state": torch.get_rng_state()})

    eval_T = train_cfg.eval_T or train_cfg.T
    last_eval: dict[str, float] = {}
    last_eval_step = saved_step = -1
    if last_eval_record is not None and last_eval_record.get("T") == eval_T:
        last_eval = {k: v for k, v in last_eval_record.items() if k not in ("split", "step", "T", "wall_time")}
        last_eval_step = step
    if resume:
        saved_step = step
    skipped = int(state.get("skipped_updates", 0)) if resume else 0
    start, base_elapsed = time.perf_counter(), elapsed
    stopped = "steps"
    note = retrieval_note(model)
    audited = _retrieves(model) and note is None
    model.train()
    with MetricsLog(run_dir / METRICS_FILE) as log, \
            tqdm(total=train_cfg.steps, initial=min(step, train_cfg.steps), disable=not progress,
                 desc=f"{task.name} T={train_cfg.T} {model_cfg.model}", dynamic_ncols=True) as bar:

        def run_eval() -> None:
            nonlocal last_eval, last_eval_step
            last_eval = evaluate(model, task, eval_T, train_cfg.eval_batches, train_cfg.seed, train_cfg.batch_size)
            last_eval_step = step
            log.write({"split": "eval", "step": step, "T": eval_T, **last_eval, "wall_time": elapsed})

        if note is not None and step == 0:
            log.write({"split": "note", "step": 0, "message": note})

        while step < train_cfg.steps:
            if train_cfg.time_budget and elapsed >= train_cfg.time_budget:
                stopped = "time_budget"
                break
            t0 = time.perf_counter()
            x, y = task.make_batch(train_cfg.T, train_cfg.batch_size, batch_generator(train_cfg.seed, step, "train"))
            logits, extra = _train_forward(model, x, train_cfg.audit_every if audited else 0)
            loss = task.loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            audit_seconds = extra.pop("audit_seconds", 0.0)
            if audited and train_cfg.grad_cosine_every and (step + 1) % train_cfg.grad_cosine_every == 0:
                t_cos = time.perf_counter()
                extra["grad_cosine"] = exact_gradient_cosine(model, lambda: task.loss(model(x), y))
                audit_seconds += time.perf_counter() - t_cos
            # max_norm=inf still returns the norm, which is worth logging even without clipping.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or float("inf"))
            # SAB's normalised sparsifier has gradients ~1/gap when the top K+1 scores nearly tie, and they
            # can overflow; an update with a non-finite gradient is skipped (and counted), never applied.
            finite = bool(torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
            else:
                skipped += 1
            # the audits measure approximate retrieval; they are not part of its cost
            seconds = time.perf_counter() - t0 - audit_seconds
            if "retrieval_seconds" in extra:
                extra["retrieval_fraction"] = extra["retrieval_seconds"] / seconds if seconds > 0 else 0.0
                extra["audit_seconds"] = audit_seconds
            step += 1
            elapsed = base_elapsed + time.perf_counter() - start
            metrics = task.metrics(logits.detach(), y)
            log.write({"split": "train", "step": step, "T": train_cfg.T, **metrics, "grad_norm": float(grad_norm),
                       "skipped_updates": skipped, **extra,
                       "wall_time": elapsed, "sec_per_update": seconds})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", **{task.primary: f"{metrics[task.primary]:.3f}"})
            if step % train_cfg.eval_every == 0:
                run_eval()
            if step % train_cfg.checkpoint_every == 0:
                elapsed = base_elapsed + time.perf_counter() - start
                checkpoint()
                saved_step = step
        if last_eval_step != step:
            run_eval()
        elapsed = base_elapsed + time.perf_counter() - start
        if saved_step != step:
            checkpoint()

    summary: dict[str, Any] = {"run_dir": str(run_dir), "task": task.name, "model": model_cfg.model,
                               "T": train_cfg.T, "eval_T": eval_T, "steps": step, "wall_time": elapsed,
                               "stopped": stopped, "skipped_updates": skipped, "primary": task.primary,
                               "eval": last_eval, "note": note}
    if record_memories is not None:
        model.eval()
        summary["memories"] = {"path": str(record_memories),
                               **dump_memories(model, task, train_cfg, record_memories, record_count)}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One line: final eval metrics, steps and wall time of a run."""
    metrics = " ".join(f"{k}={v:.4f}" for k, v in summary["eval"].items())
    line = (f"done: {summary['task']} T={summary['T']} model={summary['model']} steps={summary['steps']} "
            f"wall={summary['wall_time']:.1f}s stopped_by={summary['stopped']} | eval T={summary['eval_T']}: {metrics}")
    if summary.get("note"):
        line += f" | {summary['note']}"
    if "memories" in summary:
        m = summary["memories"]
        line += f" | memories: {m['keys']} keys, {m['queries']} queries -> {m['path']}"
    return line
