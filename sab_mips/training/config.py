"""``TrainConfig``: a training run, frozen and validated; saved with every run and checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config_base import Config, choice, non_negative_int, number, option, positive_int, require
from ..model import KERNELS
from ..tasks import IMAGE_TASKS, batch_generator

# TrainConfig fields a resumed run may change: budgets, and measurements that do not alter the updates
EXTENDABLE = ("steps", "time_budget", "audit_every", "grad_cosine_every")
ENGINES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "cosine")
LENGTH_DRAWS = ("uniform", "log-uniform")
STREAM_MEMORIES = ("stream", "window")
TEXT_FIELDS = ("window", "memory", "memory_slots", "refresh_every", "refresh_below", "eval_chars")
DATA_TASKS = ("text", *IMAGE_TASKS)  # the tasks that read data from files (``data``)
ENGINE_MIN_STEPS = 2000  # engine="auto": SAB sequences at least this long train with the memory-bounded engine


@dataclass(frozen=True)
class TrainConfig(Config):
    """A training run; ``sab-mips train --help`` lists the fields with their help."""

    task: str = option("copy", "a task name (copy, adding; pixels, pixels-permuted: an image classified from its "
                               "pixels read one per step; text: character-level language modelling over a "
                               "long text read as streams).")
    T: int = option(100, "the task's length parameter for training (copy: blanks + 1; adding: sequence length).")
    T_min: int | None = option(None, "variable-length training: each update draws its length uniformly from "
                                     "[T_min, T] (a pure function of the seed and the update's index, like its "
                                     "data); short sequences teach the retrieval that long ones need. None: "
                                     "every update uses T.")
    T_draw: str = option("uniform", "variable-length training: how each length is drawn from [T_min, T]: uniform, "
                                    "or log-uniform (as many lengths in [10, 20] as in [100, 200]: the short "
                                    "sequences, where top-K selection finds the slots that matter, stay frequent "
                                    "as T grows).")
    eval_T: int | None = option(None, "length used by periodic evaluation (None: same as T).")
    batch_size: int = option(64, "sequences per update.")
    lr: float = option(1e-3, "Adam learning rate.")
    lr_schedule: str = option("constant", "constant, or cosine: the learning rate decays along a half cosine from lr "
                                          "to lr·min_lr over the run's steps (a resume that extends steps stretches "
                                          "what is left of it).")
    warmup: int = option(0, "updates over which the learning rate rises linearly from 0 to lr (0: none).")
    min_lr: float = option(0.0, "cosine schedule: the final learning rate as a fraction of lr.")
    grad_clip: float = option(1.0, "clip the global gradient norm to this value (0: no clipping).")
    adam_eps: float = option(1e-8, "Adam's epsilon (torch's default 1e-8). Adam divides each gradient by its running "
                                   "size, so once a task is learned and the gradients shrink a thousandfold its step "
                                   "stays lr-sized; an epsilon near their size damps that drift.")
    amsgrad: bool = option(False, "Adam's AMSGrad variant: each weight's step is divided by the largest running "
                                  "gradient size it has seen instead of the current one, so the steps shrink when "
                                  "the gradients do once a task is learned (plain Adam keeps them lr-sized).")
    steps: int = option(2000, "maximum number of updates.")
    time_budget: float = option(0.0, "stop after this many seconds of training (0: no limit); checked between updates.")
    eval_every: int = option(100, "evaluate every this many updates (and at the end).")
    eval_batches: int = option(4, "batches per evaluation.")
    checkpoint_every: int = option(100, "write a checkpoint every this many updates (and at the end).")
    seed: int = option(0, "seeds parameter init and the data stream (batch i is a pure function of (seed, i)).")
    audit_every: int = option(10, "SAB-MIPS with an approximate index: compare every n-th attention step of a "
                                  "training pass with exact search (recall@k_top, attention mass recovered), and "
                                  "every step the task's metric reads (scored_recall); 0: never. Skipped for exact "
                                  "retrieval.")
    grad_cosine_every: int = option(50, "SAB-MIPS with an approximate index: every n-th update, one extra forward "
                                        "and backward with exact candidates gives the cosine between approximate "
                                        "and exact gradients; 0: never.")
    engine: str = option("auto", f"SAB: the memory-bounded training step (forward without a graph, reverse sweep "
                                 f"over chunks; the same gradients): on, off, or auto (on for sequences of "
                                 f"{ENGINE_MIN_STEPS} steps or more).")
    engine_chunk: int = option(1000, "steps the engine re-runs at once in its backward sweep (memory of one "
                                     "chunk's graph against Python overhead).")
    kernel: str = option("auto", "SAB: where its steps run: compiled (the C++ recurrence, built at first use), "
                                 "python (step by step; the reference twin), or auto (compiled where it builds "
                                 "and covers the pass, else Python with one warning line).")
    data: str | None = option(None, "task text: a corpus name (kjv, gcide; installed by make data) or the path of "
                                    "a UTF-8 file. Tasks pixels, pixels-permuted: a dataset name (fashion-mnist, "
                                    "the default; make data) or a directory of MNIST-layout IDX files.")
    permutation_seed: int = option(0, "task pixels-permuted: the seed of the fixed pixel order (a Fisher-Yates "
                                      "shuffle of its own, stable across library versions).")
    window: int = option(200, "task text: characters per window; each update reads the next window of every "
                              "stream (B = batch_size streams), the gradient stops at its boundary.")
    memory: str = option("stream", "task text, SAB: what the memory holds: stream (every slot of the pass so far, "
                                   "or memory_slots) or window (the current window's slots only; (h, c) carried).")
    memory_slots: int = option(0, "task text, SAB: at most this many slots per stream (0: the whole pass); when a "
                                  "window leaves more, the oldest are dropped down to half of it and the index is "
                                  "re-keyed.")
    refresh_every: int = option(0, "task text, SAB with an index: re-key the index with today's weights every this "
                                   "many windows (0: never).")
    refresh_below: float = option(0.0, "task text, SAB with an index: re-key it when an audited window's recall "
                                       "(against today's keys) is below this (0: never).")
    eval_chars: int = option(0, "task text: characters of the validation split each periodic evaluation streams "
                                "(its first ones; 0: the whole split).")
    init_from: str | None = option(None, "a run directory (or checkpoint file) whose weights and Adam state start "
                                         "this run (warm start; None: initialise from the seed). Its model must "
                                         "have the same parameter shapes; T, retrieval, k_cand, k_top, k_att, "
                                         "k_trunc, lr and the rest may differ. Steps count from 0.")

    def __post_init__(self) -> None:
        require(isinstance(self.task, str), f"task must be a task name, got {self.task!r}")
        for name in ("lr", "min_lr", "grad_clip", "adam_eps", "time_budget"):
            number(name, getattr(self, name))
        choice("engine", self.engine, ENGINES)
        choice("kernel", self.kernel, KERNELS)
        choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        choice("T_draw", self.T_draw, LENGTH_DRAWS)
        require(self.T_draw == "uniform" or self.T_min is not None,
                f"T_draw={self.T_draw!r} draws lengths from [T_min, T]: it needs T_min (variable-length training)")
        non_negative_int("warmup", self.warmup, "0: none")
        require(0 <= self.min_lr <= 1, f"min_lr must be in [0, 1] (a fraction of lr), got {self.min_lr!r}")
        positive_int("engine_chunk", self.engine_chunk)
        for name in ("T", "batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every"):
            positive_int(name, getattr(self, name))
        if self.eval_T is not None:
            positive_int("eval_T", self.eval_T)
        if self.T_min is not None:
            positive_int("T_min", self.T_min)
            require(self.T_min <= self.T, f"T_min must be <= T, got T_min={self.T_min} and T={self.T}")
        non_negative_int("seed", self.seed)
        non_negative_int("audit_every", self.audit_every, "0: never")
        non_negative_int("grad_cosine_every", self.grad_cosine_every, "0: never")
        require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        require(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps!r}")
        require(isinstance(self.amsgrad, bool), f"amsgrad must be true or false, got {self.amsgrad!r}")
        require(self.time_budget >= 0, f"time_budget must be >= 0, got {self.time_budget!r}")
        choice("memory", self.memory, STREAM_MEMORIES)
        positive_int("window", self.window)
        for name in ("memory_slots", "refresh_every", "eval_chars"):
            non_negative_int(name, getattr(self, name), "0: none")
        number("refresh_below", self.refresh_below)
        require(0 <= self.refresh_below <= 1, f"refresh_below must be in [0, 1] (a recall), got {self.refresh_below!r}")
        require(self.memory_slots == 0 or self.memory_slots >= 2,
                f"memory_slots must be 0 (no cap) or >= 2, got {self.memory_slots}")
        non_negative_int("permutation_seed", self.permutation_seed)
        require(self.task in DATA_TASKS or self.data is None,
                f"data applies to tasks {', '.join(DATA_TASKS)} only, not {self.task!r}")
        require(self.task != "text" or self.data is not None,
                "task text needs data: a corpus name (kjv, gcide) or the path of a UTF-8 file")


def train_length(cfg: TrainConfig, step: int) -> int:
    """The length parameter of update ``step`` (0-based): T, or with ``T_min`` a draw from [T_min, T] (uniform or
    log-uniform, ``T_draw``) that depends only on (seed, step), so a resumed run draws the same lengths."""
    if cfg.T_min is None:
        return cfg.T
    generator = batch_generator(cfg.seed, step, "length")
    if cfg.T_draw == "uniform":
        return cfg.T_min + int(torch.randint(cfg.T - cfg.T_min + 1, (), generator=generator))
    # log-uniform over the integers: floor(exp(u)) for u uniform in [log T_min, log(T + 1))
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    low, high = math.log(cfg.T_min), math.log(cfg.T + 1)
    return min(cfg.T, max(cfg.T_min, math.floor(math.exp(low + u * (high - low)))))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based): warm-up, then constant or a half cosine to lr·min_lr."""
    scale = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, step / max(1, cfg.steps - 1))
        scale *= cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * scale
