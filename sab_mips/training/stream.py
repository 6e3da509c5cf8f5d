"""Streaming language modelling: one long text read as B parallel streams, in windows of W characters.

    trainer = StreamTrainer(SABConfig(model="sab"), TrainConfig(task="text", data="kjv", window=200), "runs/kjv")
    trainer.run()

Each update reads the next window of every stream (``corpora.window``). What the model carries from window
to window is its state: (h, c), and for SAB the slot memory and its index (``SABState``). The gradient stops
at the window boundary (``state.detach()``): slots written in earlier windows are constants there, retrieved
and re-scored exactly like the others, so the query and the scorer still learn from them, while their
contents get no gradient (their graph is gone). A pass over the streams is ``windows_per_pass`` updates;
the memory restarts with each pass.

Memory (``TrainConfig.memory``): ``stream``, every slot of the pass so far, or at most ``memory_slots`` per
stream: when a window leaves more, the oldest are dropped, down to half the cap (so the index is rebuilt
once per ``memory_slots / 2`` slots written, not at every window), and the index is re-keyed over the rest;
``window``, only the slots of the current window (the memory restarts at every window, (h, c) carried).

Stale keys: the index holds each slot's key as computed when it was written; the exact re-scoring uses the
weights of now. Audits (``audit_every``) compare the searched candidates with exact search over *today's*
keys: in a window that holds an audited attention step, the audits' reference index is re-keyed first. An
``exact`` index is audited too: its recall below 1 is the staleness of its keys alone.
``refresh_every`` re-keys the searched index every R windows, ``refresh_below`` whenever the last audited
recall fell below a threshold; ``refresh_seconds`` in the metrics is what re-keying cost.

Resume: a checkpoint holds the stream's position and the whole state, memory and index included
(``state_dict`` of each index), so a resumed run continues exactly where it stood.

Shapes: B streams, W window, V vocabulary size, N slots per stream, H hidden size, d key size.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..corpora import Corpus, Vocabulary, load_corpus, streams, window, windows_per_pass
from ..devices import rss_gib
from ..errors import UserError
from ..model import SABConfig, SABLSTM, build_model, use_kernel
from ..model.options import PassOptions
from ..model.state import SABState
from ..ops.memory import SlotMemory
from .config import TrainConfig
from .numerics import flush_denormals
from .rundir import (CHECKPOINT_FILE, METRICS_FILE, MetricsLog, load_checkpoint, resume_checkpoint, save_checkpoint,
                     save_config, saved_configs, start_run_dir, truncate_metrics)
from .schedule import run_updates
from .update import optimizer_step

STREAM_MODELS = ("sab", "lstm", "tbptt")
VOCABULARY_FILE = "vocabulary.json"
BITS_PER_NAT = 1 / math.log(2)


def one_hot(ids: torch.Tensor, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Characters (B, W) as one-hot inputs (B, W, V)."""
    return F.one_hot(ids, size).to(dtype)


class StreamRunner:
    """Carries a model's state along B streams, window by window, under the run's memory rules.

    ``step(x)`` gives the logits of the next window (in the graph when grad is enabled) and keeps the state;
    ``end_window()`` cuts the graph and applies the memory cap; ``reset()`` starts the streams afresh.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, batch: int, memory_slots: int | None = None,
                 audits: bool = False) -> None:
        self.model, self.cfg, self.batch = model, cfg, batch
        self.memory_slots = cfg.memory_slots if memory_slots is None else memory_slots
        self.sab = isinstance(model, SABLSTM)
        self.audits = audits and self.sab and model.layer.audit_skip_reason(stale_keys=True) is None
        self.state: SABState | tuple[torch.Tensor, torch.Tensor] | None = None
        self.refresh_seconds = 0.0

    def reset(self) -> None:
        self.state = None

    def _fresh_sab_state(self, x: torch.Tensor) -> SABState:
        options = PassOptions(audit_every=self.cfg.audit_every, stale_keys=True) if self.audits else None
        return self.model.layer.initial_state(self.batch, options, device=x.device, dtype=x.dtype,
                                              steps=self.cfg.window)

    def key_of(self):
        """The function giving a slot's index key under today's weights (for re-keying)."""
        return self.model.layer.scorer.projection().key

    def step(self, x: torch.Tensor, record: bool = False) -> torch.Tensor:
        """Logits (B, W, V) of the window x (B, W, V), continuing the streams; ``record``: keep this window's
        attention record (SAB; ``state.recorder.take_record``)."""
        if not self.sab:
            logits, self.state = self.model.stream(x, self.state)
            return logits
        state = self.state
        if state is None or self.cfg.memory == "window":
            fresh = self._fresh_sab_state(x)
            if state is not None:  # window-only memory: (h, c) and the step counts carry over (audit schedule)
                fresh.h, fresh.c, fresh.t, fresh.attention_steps = state.h, state.c, state.t, state.attention_steps
            state = fresh
        if self.audits:
            self._schedule_audits(state, x.shape[1])
        state.recorder.record_from_now(record)
        logits, self.state = self.model.stream(x, state)
        return logits

    def _schedule_audits(self, state: SABState, width: int) -> None:
        """Audit this window only if it holds an audited attention step; then first re-key the audits'
        reference, so that they measure the index against exact search with today's keys."""
        every = self.cfg.audit_every
        first, last = state.attention_steps, state.attention_steps + width - 1  # at most one per step
        audited = every > 0 and last // every > (first - 1) // every  # a multiple of every in [first, last]
        state.recorder.audit_every_step(every if audited else 0)
        if audited and state.memory.size:
            start = time.perf_counter()
            with torch.no_grad():
                state.recorder.rekey(self.key_of()(state.memory.values()))
            state.recorder.stats.audit_seconds += time.perf_counter() - start  # an audit's cost, not training's

    def end_window(self, refresh: bool = False) -> None:
        """Cut the graph at the window boundary; apply the memory cap; re-key the index if ``refresh``."""
        if self.state is None:
            return
        if not self.sab:
            self.state = tuple(s.detach() for s in self.state)
            return
        state = self.state.detach()
        if self.memory_slots and state.memory.size > self.memory_slots:
            self.refresh_seconds += state.keep_newest(self.memory_slots // 2, self.key_of())
        elif refresh:
            self.refresh_seconds += state.rekey(self.key_of())

    @property
    def steps_done(self) -> int:
        """Steps the SAB state has done (the global step of the next window's first step; 0 otherwise)."""
        return self.state.t if self.sab and self.state is not None else 0

    @property
    def memory_size(self) -> int:
        """Slots each stream holds now (0 for models without a memory)."""
        return self.state.memory.size if self.sab and self.state is not None else 0

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """The carried state, for a checkpoint (tensors and plain containers only)."""
        if self.state is None:
            return None
        if not self.sab:
            return {"h": self.state[0], "c": self.state[1]}
        s = self.state
        out = {"h": s.h, "c": s.c, "t": s.t, "attention_steps": s.attention_steps,
               "values": s.memory.values().clone(), "times": list(s.memory.times),
               "index": s.index.state_dict() if s.index is not None else None}
        reference = s.recorder.exact_index
        out["reference"] = reference.state_dict() if reference is not None else None
        out["audit_every"] = s.recorder.audit_every
        return out

    def load_state_dict(self, saved: dict[str, Any] | None, like: torch.Tensor) -> None:
        """Restore the carried state from ``state_dict()``; ``like`` a tensor on the run's device and dtype."""
        if saved is None:
            self.state = None
            return
        if not self.sab:
            self.state = (saved["h"].to(like.device), saved["c"].to(like.device))
            return
        state = self._fresh_sab_state(like)
        state.h, state.c = saved["h"].to(like.device), saved["c"].to(like.device)
        state.t, state.attention_steps = saved["t"], saved["attention_steps"]
        state.memory = SlotMemory.of_constants(saved["values"].to(like.device), saved["times"])
        if saved["index"] is not None and saved["index"]["factory"] == str(state.index):
            state.index.load_state_dict(saved["index"])
        elif state.index is not None:  # searched with another index now: one over today's keys
            self.refresh_seconds += state.rekey(self.key_of())
        if saved["reference"] is not None and state.recorder.exact_index is not None:  # else: not audited now
            state.recorder.exact_index.load_state_dict(saved["reference"])
            state.recorder.audit_every_step(saved["audit_every"])
        self.state = state


DISTANCE_BINS = 21  # attention distances in powers of two: [1, 2), [2, 4), ..., [2^20, inf)


class AttentionDistances:
    """Where a stream's attention goes: the weight on attended slots by how far back they were written
    (log2 bins, ``DISTANCE_BINS``), and the share on slots written before the current window."""

    def __init__(self) -> None:
        self.histogram = torch.zeros(DISTANCE_BINS, dtype=torch.float64)
        self.before_window = 0.0

    def add(self, record, window_start: int) -> None:
        """One window's ``AttentionRecord`` (steps (S,), slot_ids and weights (S, B, K), slot_times (N,))."""
        if record.steps.numel() == 0:
            return
        valid = record.slot_ids >= 0
        written = record.slot_times[record.slot_ids.clamp(min=0)]  # (S, B, K)
        distance = (record.steps.view(-1, 1, 1) - written).clamp(min=1)
        bins = distance.double().log2().floor().long().clamp(max=DISTANCE_BINS - 1)
        weights = (record.weights.double() * valid)
        self.histogram += torch.zeros(DISTANCE_BINS, dtype=torch.float64).index_add_(0, bins.view(-1),
                                                                                     weights.view(-1))
        self.before_window += float((weights * (written < window_start)).sum())

    def as_metrics(self) -> dict[str, Any]:
        total = float(self.histogram.sum())
        if total == 0:
            return {}
        share = self.histogram / total
        median_bin = int((share.cumsum(0) >= 0.5).nonzero()[0])
        return {"old_attention": self.before_window / total, "attention_distance_median": 2 ** median_bin,
                "attention_distance_hist": [round(float(v), 6) for v in share]}


@torch.no_grad()
def evaluate_stream(model: torch.nn.Module, cfg: TrainConfig, ids: torch.Tensor, batch: int,
                    memory_slots: int | None = None, max_chars: int = 0, audit_every: int = 0,
                    attention_every: int = 0, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bits per character of ``ids`` (a whole split, 1-D) streamed through the model in ``batch`` streams
    and windows of ``cfg.window``, the state and memory carried as in training (``memory_slots``: another
    cap than training's, 0 for none); ``max_chars``: only the first characters of each stream (0: all).

    Returns ``loss`` (nats), ``bpc``, ``chars`` (characters scored), ``memory_slots`` (slots per stream at
    the end), ``ms_per_step`` and, with ``audit_every``, the audited ``recall`` against today's keys; with
    ``attention_every`` (SAB), the attention of every n-th window by distance (``AttentionDistances``).
    ``start``: a state to continue from (``StreamRunner.state_dict``, e.g. a checkpoint's ``stream_state``:
    the memory of the training stream) instead of an empty one; ``batch`` must then be the training's."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    rows = streams(ids, batch, cfg.window)
    if max_chars:
        rows = rows[:, : max(cfg.window + 1, max_chars // batch)]
    eval_cfg = cfg.replace(audit_every=audit_every)
    runner = StreamRunner(model, eval_cfg, batch, memory_slots=memory_slots, audits=bool(audit_every))
    if start is not None:
        streams_saved = start["h"].shape[-2]  # (B, H) for SAB, (1, B, H) for the LSTM
        if streams_saved != batch:
            raise ValueError(f"the state to continue holds {streams_saved} streams; batch is {batch}")
        runner.load_state_dict(start, param)
    distances = AttentionDistances() if attention_every and runner.sab else None
    nats, count, seconds = 0.0, 0, 0.0
    for w in range(windows_per_pass(rows.shape[1], cfg.window)):
        x, y = window(rows, w * cfg.window, cfg.window)
        x, y = one_hot(x, model.config.input_size, param.dtype).to(param.device), y.to(param.device)
        sampled = distances is not None and w % attention_every == 0
        window_start = runner.steps_done
        began = time.perf_counter()
        logits = runner.step(x, record=sampled)
        if sampled:
            distances.add(runner.state.recorder.take_record(runner.state.memory.times), window_start)
        runner.end_window()
        seconds += time.perf_counter() - began
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[2]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    out = {"loss": nats / count, "bpc": nats / count * BITS_PER_NAT, "chars": count,
           "memory_slots": runner.memory_size, "ms_per_step": 1e3 * seconds / (count / batch)}
    if runner.sab and runner.state is not None:
        metrics = runner.state.recorder.stats.as_metrics()
        out["retrieval_seconds"] = metrics["retrieval_seconds"]
        out.update({k: metrics[k] for k in ("recall", "mass_recovered") if k in metrics})
    if distances is not None:
        out.update(distances.as_metrics())
    return out


def load_stream_run(run_dir: str | Path) -> tuple[torch.nn.Module, Corpus, TrainConfig, dict[str, Any]]:
    """A trained text run: (model with its weights, corpus encoded with the run's vocabulary, train config,
    checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    saved = load_checkpoint(run_dir / CHECKPOINT_FILE)
    model_cfg, train_cfg = saved_configs(saved)
    if train_cfg.task != "text":
        raise UserError(f"{run_dir} is a run of task '{train_cfg.task}', not of task 'text'")
    vocab_path = run_dir / VOCABULARY_FILE
    if not vocab_path.is_file():
        raise UserError(f"{run_dir} has no {VOCABULARY_FILE}: it is not a complete text run")
    corpus = load_corpus(train_cfg.data, vocabulary=Vocabulary.from_json(vocab_path.read_text()))
    model = build_model(model_cfg)
    model.load_state_dict(saved["model_state"])
    use_kernel(model, train_cfg.kernel)
    return model, corpus, train_cfg, saved


class StreamTrainer:
    """One streaming run in ``run_dir`` (``TrainConfig.task == "text"``): built fresh or resumed.

    ``train_step()`` reads the next window of every stream and makes one update; ``evaluate()`` streams the
    validation split; ``checkpoint()`` saves everything, the streams' state included; ``run()`` loops.
    """

    def __init__(self, model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, device: str = "cpu") -> None:
        flush_denormals()
        if model_cfg.model not in STREAM_MODELS:
            raise UserError(f"task 'text' trains models {', '.join(STREAM_MODELS)}; got '{model_cfg.model}'")
        if train_cfg.data is None:
            raise UserError("task 'text' needs --data: a corpus name (kjv, gcide) or a UTF-8 file")
        self.run_dir, self.train_cfg, self.progress = Path(run_dir), train_cfg, progress
        self.device = torch.device(device)
        vocab_path = self.run_dir / VOCABULARY_FILE
        saved_vocab = Vocabulary.from_json(vocab_path.read_text()) if resume and vocab_path.is_file() else None
        self.corpus: Corpus = load_corpus(train_cfg.data, vocabulary=saved_vocab)
        V = len(self.corpus.vocabulary)
        self.model_cfg = model_cfg.replace(input_size=V, output_size=V)
        torch.manual_seed(train_cfg.seed)
        self.model = build_model(self.model_cfg).to(self.device)
        use_kernel(self.model, train_cfg.kernel)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg.lr, eps=train_cfg.adam_eps,
                                          amsgrad=train_cfg.amsgrad)
        self.rows = streams(self.corpus.splits["train"], train_cfg.batch_size, train_cfg.window, name="train")
        self.windows = windows_per_pass(self.rows.shape[1], train_cfg.window)
        self.runner = StreamRunner(self.model, train_cfg, train_cfg.batch_size, audits=bool(train_cfg.audit_every))
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = self.saved_step = -1
        self.last_recall: float | None = None
        if resume:
            self._resume()
        else:
            start_run_dir(self.run_dir)
        save_config(self.run_dir, self.model_cfg, self.train_cfg)
        vocab_path.write_text(self.corpus.vocabulary.to_json())
        self.log = MetricsLog(self.run_dir / METRICS_FILE)
        self._invocation_start, self._earlier = time.perf_counter(), self.elapsed

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def _resume(self) -> None:
        saved = resume_checkpoint(self.run_dir, self.model, self.optimizer, self.model_cfg, self.train_cfg)
        self.step, self.elapsed = int(saved["step"]), float(saved["elapsed"])
        self.skipped = int(saved.get("skipped_updates", 0))
        self.last_recall = saved.get("last_recall")
        self.runner.refresh_seconds = float(saved.get("refresh_seconds", 0.0))
        self.saved_step = self.step
        self.runner.load_state_dict(saved["stream_state"], next(self.model.parameters()))
        truncate_metrics(self.run_dir / METRICS_FILE, self.step)

    def _tick(self) -> None:
        self.elapsed = self._earlier + time.perf_counter() - self._invocation_start

    def train_step(self) -> dict[str, Any]:
        """One update on the next window of every stream; returns (and logs) its metrics line."""
        cfg, model, runner = self.train_cfg, self.model, self.runner
        t0 = time.perf_counter()
        w = self.step % self.windows
        if w == 0:
            runner.reset()  # a new pass over the data: the memory restarts
        x, y = window(self.rows, w * cfg.window, cfg.window)
        x, y = one_hot(x, self.model_cfg.input_size).to(self.device), y.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        logits = runner.step(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[2]), y.reshape(-1))
        loss.backward()
        extra: dict[str, float] = {}
        if runner.sab:
            stats = runner.state.recorder.stats
            metrics = stats.as_metrics()
            if "recall" in metrics:  # this window was audited: its recall against today's keys
                extra["recall"] = self.last_recall = metrics["recall"]
                extra["mass_recovered"] = metrics["mass_recovered"]
            extra["retrieval_seconds"] = metrics["retrieval_seconds"]
            audit_seconds = stats.audit_seconds
            runner.state.recorder.stats = type(stats)(audits=stats.audits)  # per-window sums
        else:
            audit_seconds = 0.0
        grad_norm, lr, applied = optimizer_step(model, self.optimizer, cfg, self.step)
        self.skipped += not applied
        refresh = self._refresh_due(w)
        before = runner.refresh_seconds
        runner.end_window(refresh=refresh)
        extra["refresh_seconds"] = runner.refresh_seconds - before
        seconds = time.perf_counter() - t0 - audit_seconds
        self.step += 1
        self._tick()
        loss = loss.item()
        record = {"split": "train", "step": self.step, "pass": (self.step - 1) // self.windows, "window": w,
                  "loss": loss, "bpc": loss * BITS_PER_NAT, "memory_slots": runner.memory_size,
                  "grad_norm": float(grad_norm), "lr": lr, "skipped_updates": self.skipped, **extra,
                  "wall_time": self.elapsed, "sec_per_update": seconds,
                  "ms_per_step": 1e3 * seconds / cfg.window, "rss_gib": rss_gib()}
        self.log.write(record)
        return record

    def _refresh_due(self, w: int) -> bool:
        """Whether to re-key the index after window ``w``: every ``refresh_every`` windows, or when the last
        audited recall fell below ``refresh_below`` (then once, until an audit says otherwise)."""
        cfg = self.train_cfg
        if cfg.refresh_every and (w + 1) % cfg.refresh_every == 0:
            return True
        if cfg.refresh_below and self.last_recall is not None and self.last_recall < cfg.refresh_below:
            self.last_recall = None
            return True
        return False

    def evaluate(self) -> dict[str, float]:
        """Bits per character on the validation split (its first ``eval_chars`` characters), streamed with a
        memory of its own; logged and returned."""
        cfg = self.train_cfg
        self.last_eval_step = self.step
        self.last_eval = evaluate_stream(self.model, cfg, self.corpus.splits["valid"], cfg.batch_size,
                                         max_chars=cfg.eval_chars)
        self.log.write({"split": "eval", "step": self.step, "data": "valid", **self.last_eval,
                        "wall_time": self.elapsed})
        return self.last_eval

    def checkpoint(self) -> None:
        """Write the checkpoint (atomically): weights, Adam state, position, the streams' state, RNG state."""
        self._tick()
        self.saved_step = self.step
        save_checkpoint(self.checkpoint_path, {
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "step": self.step, "elapsed": self.elapsed, "skipped_updates": self.skipped,
            "model_config": self.model_cfg.to_dict(), "train_config": self.train_cfg.to_dict(),
            "rng_state": torch.get_rng_state(), "stream_state": self.runner.state_dict(),
            "last_recall": self.last_recall, "refresh_seconds": self.runner.refresh_seconds})

    def run(self) -> dict[str, Any]:
        """Train until ``steps`` updates or ``time_budget`` seconds; evaluate and checkpoint at the end."""
        cfg = self.train_cfg
        self.model.train()
        description = f"text {cfg.data} W={cfg.window} {self.model_cfg.model}"
        try:
            stopped = run_updates(self, description,
                                  lambda line: {"bpc": f"{line['bpc']:.3f}", "slots": str(line["memory_slots"])},
                                  lambda: bool(cfg.time_budget) and self.elapsed >= cfg.time_budget)
        finally:
            self.log.close()
        self._tick()
        return {"run_dir": str(self.run_dir), "task": "text", "model": self.model_cfg.model, "T": cfg.window,
                "eval_T": cfg.window, "steps": self.step, "wall_time": self.elapsed, "stopped": stopped,
                "skipped_updates": self.skipped, "primary": "bpc", "eval": self.last_eval, "note": None,
                "rank": 0, "processes": 1, "device": str(self.device), "passes": self.step / self.windows}
