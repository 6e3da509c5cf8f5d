"""The one training loop shared by every model and task: ``Trainer`` (and ``train``, its one-call form).

Reproducibility: parameters are initialised from ``TrainConfig.seed``; training batch i is drawn from
``batch_generator(seed, i, "train")`` and evaluation batch j from ``(seed, j, "eval")``. The data therefore
never depend on how many updates ran in this process, and a run resumed from a checkpoint at step s
continues exactly as the uninterrupted run would have (same parameters, same metrics; only the timing
fields differ).

Resume rule (``resume=True``): the run directory must hold a checkpoint; the requested configs must equal
the saved ones except those in ``EXTENDABLE`` (``steps`` and ``time_budget``, to extend or shorten the run,
and the audit intervals, which do not alter the updates); any other difference is an error that names
the fields. Metric lines logged after the checkpoint's step (by a run killed between checkpoints) are
dropped. ``time_budget`` counts wall time over all invocations of a run (a resumed run continues its clock).

Warm start (``TrainConfig.init_from``): a new run takes the weights and Adam state of another run's
checkpoint (``rundir.warm_start``), e.g. to continue a trained model at a longer T or with another
retrieval index; its own step count, data stream and learning rate start fresh.

Devices and processes: ``device`` is where the run computes (not part of its config: a run may resume on
another device). Under ``torchrun`` every process trains its share of each batch (``distributed``).

Example:
    >>> summary = train(SABConfig(model="lstm", hidden_size=16), TrainConfig(task="copy", T=5, steps=10),
    ...                 "runs/demo", progress=False)
    >>> summary["eval"]["accuracy"]
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..errors import UserError
from ..model import MIPS_SCORERS, SABLSTM, PassOptions, SABConfig, use_kernel
from ..tasks import batch_generator
from .audit import audited_pass, exact_gradient_cosine
from .config import ENGINE_MIN_STEPS, TrainConfig, train_length
from .distributed import Distributed
from .evaluate import evaluate
from .memories import dump_memories
from .numerics import flush_denormals
from .rng import replaying, rng_state
from .schedule import run_updates
from .stream import StreamTrainer
from .rundir import (CHECKPOINT_FILE, METRICS_FILE, MetricsLog, build, read_metrics, refuse_existing_run,
                     resume_checkpoint, save_checkpoint, save_config, start_run_dir, truncate_metrics, warm_start)
from .update import optimizer_step


class Trainer:
    """One run in ``run_dir``: built fresh (or warm-started) or resumed from its checkpoint.

    ``train_step()`` does one update and returns its metrics line; ``evaluate()`` and ``checkpoint()``
    do what they say; ``run()`` loops until ``steps`` or ``time_budget`` and returns a summary.
    Every metrics line goes to ``metrics.jsonl`` as it is made.
    """

    def __init__(self, model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, device: str = "auto") -> None:
        flush_denormals()
        self.run_dir = Path(run_dir)
        self.train_cfg = train_cfg
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per torchrun process
        self.dist = Distributed.from_env(self.device)
        self.dist.check_batch(train_cfg.batch_size)
        self.model, self.task, self.model_cfg = build(model_cfg, train_cfg)
        use_kernel(self.model, train_cfg.kernel)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg.lr, eps=train_cfg.adam_eps,
                                          amsgrad=train_cfg.amsgrad)
        self.progress = progress and self.dist.is_main
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        self.eval_T = train_cfg.eval_T or train_cfg.T
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = self.saved_step = -1
        if train_cfg.engine == "on" and not (isinstance(self.model, SABLSTM) and self.model.retrieves):
            raise UserError(f"engine 'on' needs model 'sab' (truncation is what lets it bound memory), got "
                            f"'{self.model_cfg.model}'")
        reason = self.model.audit_skip_reason() if self.model.retrieves else None
        self.note = None if reason is None else f"retrieval audits {reason}"
        self.audited = self.model.retrieves and reason is None
        if resume:
            self._resume()
        else:
            self._start()
        self.dist.same_parameters(self.model)
        if self.dist.is_main:
            save_config(self.run_dir, self.model_cfg, self.train_cfg)
        self.log = MetricsLog(self.run_dir / METRICS_FILE) if self.dist.is_main else None
        if self.note is not None and self.step == 0:
            self._write({"split": "note", "step": 0, "message": self.note})
        self.dist.barrier()  # rank 0 has prepared the run directory
        # wall time of this invocation counts from here, added to what earlier invocations of the run spent
        self._invocation_start, self._earlier = time.perf_counter(), self.elapsed

    def _write(self, record: dict[str, Any]) -> None:
        """Log a metrics line (rank 0 writes; the other processes' lines are their share of rank 0's)."""
        if self.log is not None:
            self.log.write(record)

    def _tick(self) -> None:
        self.elapsed = self._earlier + time.perf_counter() - self._invocation_start

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def _start(self) -> None:
        refuse_existing_run(self.run_dir)  # in every process, and before a warm start can fail
        if self.train_cfg.init_from is not None:
            warm_start(self.model, self.optimizer, self.model_cfg, self.train_cfg.init_from)
        if self.dist.is_main:
            start_run_dir(self.run_dir)

    def _resume(self) -> None:
        state = resume_checkpoint(self.run_dir, self.model, self.optimizer, self.model_cfg, self.train_cfg)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.skipped = int(state.get("skipped_updates", 0))
        self.saved_step = self.step
        if state.get("cuda_rng_state") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng_state"], self.device)
        if self.dist.is_main:
            truncate_metrics(self.run_dir / METRICS_FILE, self.step)
        # a finished run resumed only to record memories keeps its final evaluation
        done = [r for r in read_metrics(self.run_dir / METRICS_FILE)
                if r.get("split") == "eval" and r.get("step") == self.step and "source" not in r]
        if done and done[-1].get("T") == self.eval_T:
            self.last_eval = {k: v for k, v in done[-1].items() if k not in ("split", "step", "T", "wall_time")}
            self.last_eval_step = self.step

    # ---- the three things a loop does ------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One update on batch ``step`` of the run's stream; returns (and logs) its metrics line.

        The update itself is ``_backward`` then ``_apply``; what is measured on the way (the pass's
        diagnostics and retrieval statistics, the exact-gradient audit) is kept out of the update's time."""
        cfg, task = self.train_cfg, self.task
        t0 = time.perf_counter()
        T = train_length(cfg, self.step)
        x, y = task.make_batch(T, cfg.batch_size, batch_generator(cfg.seed, self.step, "train"))
        # every process draws the whole batch i and trains on its own rows
        x = self.dist.shard(x, cfg.batch_size).to(self.device)
        y = self.dist.shard(y, cfg.batch_size).to(self.device)
        cosine_audit = self.audited and cfg.grad_cosine_every and (self.step + 1) % cfg.grad_cosine_every == 0
        # the exact-gradient audit replays this pass's exploration draws (captured only when it will run)
        rng_before = rng_state(self.device) if cosine_audit else None
        audit_every = cfg.audit_every if self.audited else 0
        out, logits = self._backward(x, y, audited_pass(task, x.shape[1], audit_every, diagnostics=True))
        extra = {} if out is None else {**out.diagnostics.as_metrics(),
                                        **(out.stats.as_metrics() if self.model.retrieves else {})}
        audit_seconds = extra.pop("audit_seconds", 0.0)
        if cosine_audit:
            t_cos = time.perf_counter()
            with replaying(rng_before, self.device):
                extra["grad_cosine"] = exact_gradient_cosine(self.model, lambda: self._exact_backward(x, y))
            audit_seconds += time.perf_counter() - t_cos
        grad_norm, lr = self._apply(extra)
        # the audits measure approximate retrieval; they are not part of its cost
        seconds = time.perf_counter() - t0 - audit_seconds
        if "retrieval_seconds" in extra:
            extra["retrieval_fraction"] = extra["retrieval_seconds"] / seconds if seconds > 0 else 0.0
            extra["audit_seconds"] = audit_seconds
        self.step += 1
        self._tick()
        metrics = self.dist.mean(task.metrics(logits.detach(), y), self.device)  # over the whole batch
        record = {"split": "train", "step": self.step, "T": T, **metrics,
                  "grad_norm": float(grad_norm), "lr": lr, "skipped_updates": self.skipped, **extra,
                  "wall_time": self.elapsed, "sec_per_update": seconds}
        self._write(record)
        return record

    def _backward(self, x: torch.Tensor, y: torch.Tensor, options: PassOptions):
        """The loss's gradient in every parameter's ``.grad`` (averaged over processes); returns the pass's
        ``SABOutput`` (None for the LSTM baselines) and the logits."""
        model, task, cfg = self.model, self.task, self.train_cfg
        self.optimizer.zero_grad(set_to_none=True)
        if self.uses_engine(x.shape[1]):
            out = model.forward_backward(x, y, task.loss, chunk=cfg.engine_chunk, chunk_loss=task.chunk_loss,
                                         options=options)
            logits = out.logits
        else:
            # SAB and the dense baseline report attention diagnostics and retrieval statistics
            out = model.run(x, options) if isinstance(model, SABLSTM) else None
            logits = out.logits if out is not None else model(x)
            task.loss(logits, y).backward()
        self.dist.average_gradients(model.parameters())
        return out, logits

    def _exact_backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The same update's gradient with exact search (what the gradient-cosine audit compares with)."""
        self._backward(x, y, PassOptions(retrieval="exact"))

    def _apply(self, extra: dict[str, float]) -> tuple[torch.Tensor, float]:
        """The optimiser step (``optimizer_step``); adds the parameter and update norms to ``extra``; returns
        the gradient norm and the learning rate."""
        before = parameter_vector(self.model)
        grad_norm, lr, applied = optimizer_step(self.model, self.optimizer, self.train_cfg, self.step)
        self.skipped += not applied
        # How far the update moved the weights. Adam's step stays lr-sized when the gradients shrink once a
        # task is learned (grad_norm falls a thousandfold, update_norm does not): the drift shows here.
        after = parameter_vector(self.model)
        extra["param_norm"], extra["update_norm"] = float(after.norm()), float((after - before).norm())
        return grad_norm, lr

    def uses_engine(self, steps: int) -> bool:
        """Whether an update on sequences of ``steps`` steps uses the memory-bounded engine (``engine``)."""
        engine = self.train_cfg.engine
        sab = isinstance(self.model, SABLSTM) and self.model.retrieves
        return sab and (engine == "on" or (engine == "auto" and steps >= ENGINE_MIN_STEPS))

    def evaluate(self) -> dict[str, float]:
        """Evaluate at ``eval_T`` on the run's fixed eval batches; logs and returns the metrics (rank 0
        evaluates; the other processes go on to the next update and wait for it there)."""
        cfg = self.train_cfg
        self.last_eval_step = self.step
        if not self.dist.is_main:
            return self.last_eval
        self.last_eval = evaluate(self.model, self.task, self.eval_T, cfg.eval_batches, cfg.seed, cfg.batch_size)
        self._write({"split": "eval", "step": self.step, "T": self.eval_T, **self.last_eval, "wall_time": self.elapsed})
        return self.last_eval

    def checkpoint(self) -> None:
        """Write the checkpoint (atomically; rank 0): weights, Adam state, step, time, configs, RNG state."""
        self._tick()
        self.saved_step = self.step
        if not self.dist.is_main:
            return
        save_checkpoint(self.checkpoint_path, {
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "step": self.step, "elapsed": self.elapsed, "skipped_updates": self.skipped,
            "model_config": self.model_cfg.to_dict(), "train_config": self.train_cfg.to_dict(),
            "rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None})

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until ``steps`` updates or ``time_budget`` seconds; evaluate and checkpoint at the end."""
        cfg, primary = self.train_cfg, self.task.primary
        self.model.train()
        draw = " log-uniform" if cfg.T_draw == "log-uniform" else ""
        lengths = f"{cfg.T_min}-{cfg.T}{draw}" if cfg.T_min is not None else f"{cfg.T}"
        description = f"{self.task.name} T={lengths} {self.model_cfg.model}"
        try:
            stopped = run_updates(
                self, description,
                lambda line: {"loss": f"{line['loss']:.4f}", primary: f"{line[primary]:.3f}"},
                lambda: self.dist.agree(bool(cfg.time_budget) and self.elapsed >= cfg.time_budget, self.device))
        finally:
            if self.log is not None:
                self.log.close()
        self._tick()
        return {"run_dir": str(self.run_dir), "task": self.task.name, "model": self.model_cfg.model, "T": cfg.T,
                "eval_T": self.eval_T, "steps": self.step, "wall_time": self.elapsed, "stopped": stopped,
                "skipped_updates": self.skipped, "primary": primary, "eval": self.last_eval, "note": self.note,
                "rank": self.dist.rank, "processes": self.dist.world, "device": str(self.device)}


def train(model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True, record_memories: str | Path | None = None,
          record_count: int = 100_000, device: str = "auto") -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; return a summary dict (see ``format_summary``). Task ``text``
    streams a corpus (``stream.StreamTrainer``).

    With ``record_memories`` (an .npz path), afterwards dumps the keys and queries the model's index saw
    for retrieval benchmarks (``dump_memories``; rank 0).
    """
    if record_memories is not None and (model_cfg.model != "sab" or model_cfg.scorer not in MIPS_SCORERS):
        raise UserError(f"--record-memories needs model 'sab' with a scorer an index can serve ({', '.join(MIPS_SCORERS)}); "
                        f"this is model '{model_cfg.model}' with scorer '{model_cfg.scorer}'")
    if train_cfg.task == "text":
        if record_memories is not None:
            raise UserError("--record-memories applies to the synthetic tasks, not to task 'text'")
        return StreamTrainer(model_cfg, train_cfg, run_dir, resume=resume, progress=progress,
                             device=str(resolve_device(device))).run()
    trainer = Trainer(model_cfg, train_cfg, run_dir, resume=resume, progress=progress, device=device)
    summary = trainer.run()
    if record_memories is not None and trainer.dist.is_main:
        trainer.model.eval()
        summary["memories"] = {"path": str(record_memories), **dump_memories(
            trainer.model, trainer.task, train_cfg, record_memories, record_count)}
    trainer.dist.close()
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


def parameter_vector(model: torch.nn.Module) -> torch.Tensor:
    """All of ``model``'s parameters as one detached flat vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
