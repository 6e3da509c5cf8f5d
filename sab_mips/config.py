"""Configuration of models and training runs: frozen, validated dataclasses.

``SABConfig`` describes every model of the family (SAB and the paper's baselines); each model uses a
subset of the fields, listed in ``MODEL_FIELDS``, so that a front end can refuse an option that would be
ignored. ``TrainConfig`` describes a training run. Both are saved with every run and checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

from indexes import make_index

SCORERS = ("dot", "additive", "official")

# Which SABConfig fields each model reads (besides input_size/output_size/hidden_size).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "sab": ("k_top", "k_att", "attend_every", "k_trunc", "scorer", "attn_dim", "eps", "retrieval", "k_cand"),
    "dense": ("k_att", "attend_every", "scorer", "attn_dim"),
    "tbptt": ("k_trunc",),
    "lstm": (),
}
MODEL_DOCS = {
    "sab": "LSTM with sparse attentive backtracking (top-k attention over its own past states)",
    "dense": "LSTM with dense softmax self-attention over all stored states, full BPTT and full gradients",
    "tbptt": "LSTM trained with truncated BPTT (chain cut every k_trunc steps)",
    "lstm": "fused nn.LSTM trained with full BPTT",
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{name} must be an integer >= 1, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    _require(value in choices, f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def check_retrieval(retrieval: Any, scorer: str) -> None:
    """Refuse a bad index factory string (the index's own error lists valid backends and parameters) and
    approximate retrieval with a scorer that is not an inner product."""
    _require(isinstance(retrieval, str), f"retrieval must be an index factory string, got {retrieval!r}")
    backend = make_index(retrieval).name
    _require(scorer == "dot" or backend == "exact",
             f"retrieval {retrieval!r} needs the dot scorer (MIPS serves only inner products); scorer "
             f"{scorer!r} supports retrieval 'exact' only")


class _Config:
    """Shared helpers: dict/JSON round trip with a clear error for unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        _require(not unknown, f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class SABConfig(_Config):
    """A model of the SAB family.

    Attributes:
        model: one of ``MODEL_FIELDS`` (``sab``, ``dense``, ``tbptt``, ``lstm``).
        input_size, output_size: per-step input features and output classes (set by the task).
        hidden_size: H, the LSTM state size.
        k_top: K, slots that receive non-zero attention weight at each attention step.
        k_att: a memory slot is written every ``k_att`` steps (steps k_att-1, 2k_att-1, ...).
        attend_every: attention happens at steps t with ``t % attend_every == 0``.
        k_trunc: the recurrent chain (h, c) is detached every ``k_trunc`` steps.
        scorer: ``dot`` (MIPS-servable, default), ``additive`` or ``official`` (released code).
        attn_dim: d_k, width of the query/key projections of the ``dot`` and ``additive`` scorers.
        eps: ε in the sparsifier's normaliser ``Σ ReLU(a - δ) + ε``.
        retrieval: index factory string that finds the candidate slots (SAB-MIPS), e.g. ``exact``,
            ``faiss:HNSW32,efSearch=64``, ``alsh:K=8,L=16``; anything but ``exact`` needs the ``dot`` scorer.
        k_cand: candidates retrieved per attention step, >= k_top+1 (None: k_top+1).
    """

    model: str = "sab"
    input_size: int = 10
    output_size: int = 10
    hidden_size: int = 128
    k_top: int = 5
    k_att: int = 10
    attend_every: int = 1
    k_trunc: int = 10
    scorer: str = "dot"
    attn_dim: int = 64
    eps: float = 1e-7
    retrieval: str = "exact"
    k_cand: int | None = None

    def __post_init__(self) -> None:
        _choice("model", self.model, list(MODEL_FIELDS))
        for name in ("input_size", "output_size", "hidden_size", "k_top", "k_att", "attend_every", "k_trunc", "attn_dim"):
            _positive_int(name, getattr(self, name))
        _choice("scorer", self.scorer, SCORERS)
        _require(isinstance(self.eps, (int, float)) and self.eps > 0, f"eps must be > 0, got {self.eps!r}")
        check_retrieval(self.retrieval, self.scorer)
        if self.k_cand is not None:
            _positive_int("k_cand", self.k_cand)
            _require(self.k_cand >= self.k_top + 1,
                     f"k_cand must be >= k_top+1 = {self.k_top + 1} (the sparsifier needs the (K+1)-th score), "
                     f"got {self.k_cand}")

    @property
    def candidates(self) -> int:
        """C, the number of candidate slots retrieved per attention step."""
        return self.k_cand if self.k_cand is not None else self.k_top + 1


@dataclass(frozen=True)
class TrainConfig(_Config):
    """A training run.

    Attributes:
        task: a name from ``experiments.tasks.TASKS`` (``copy``, ``adding``).
        T: the task's length parameter for training (copy: blanks + 1; adding: sequence length).
        eval_T: length used by periodic evaluation (None: same as T).
        batch_size: sequences per update.
        lr: Adam learning rate.
        grad_clip: clip the global gradient norm to this value (0: no clipping).
        steps: maximum number of updates.
        time_budget: stop after this many seconds of training (0: no limit); checked between updates.
        eval_every: evaluate every this many updates (and at the end).
        eval_batches: batches per evaluation.
        checkpoint_every: write a checkpoint every this many updates (and at the end).
        seed: seeds parameter init and the data stream (batch i is a pure function of (seed, i)).
        audit_every: SAB-MIPS with an approximate index: compare every n-th attention step of a training
            pass with exact search (recall@k_top, attention mass recovered); 0: never. Skipped for exact
            retrieval.
        grad_cosine_every: SAB-MIPS with an approximate index: every n-th update, one extra forward and
            backward with exact candidates gives the cosine between approximate and exact gradients; 0: never.
        init_from: a run directory (or checkpoint file) whose weights and Adam state start this run (warm
            start; None: initialise from the seed). Its model must have the same parameter shapes; T,
            retrieval, k_cand, k_top, k_att, k_trunc, lr and the rest may differ. Steps count from 0.
    """

    task: str = "copy"
    T: int = 100
    eval_T: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0
    steps: int = 2000
    time_budget: float = 0.0
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    seed: int = 0
    audit_every: int = 10
    grad_cosine_every: int = 50
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("T", "batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        if self.eval_T is not None:
            _positive_int("eval_T", self.eval_T)
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("audit_every", "grad_cosine_every"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                     f"{name} must be an integer >= 0 (0: never), got {value!r}")
        _require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        _require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        _require(self.time_budget >= 0, f"time_budget must be >= 0, got {self.time_budget!r}")
