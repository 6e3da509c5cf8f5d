"""A run directory: its files, how they are written (atomically), and what can be rebuilt from them.

    config.json      {"model": SABConfig fields, "train": TrainConfig fields}
    metrics.jsonl    one JSON object per line: {"split": "train" | "eval" | "note", "step": ..., ...}
    checkpoint.pt    model + optimizer state, step, elapsed seconds, both configs, torch RNG state

Every file but the metrics log is replaced atomically (``sab_mips.io``), so a run killed at any moment
leaves either the old or the new version, never a torn one. ``metrics.jsonl`` is appended to and flushed
line by line; a torn last line is dropped when it is read.

Example:
    >>> save_checkpoint(path, {"step": 3, ...})
    >>> load_checkpoint(path)["step"]
    3
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io import atomic_write, atomic_write_text
from ..model import SABConfig, build_model, use_kernel
from ..tasks import Task, get_task
from .config import EXTENDABLE, TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_KEYS = ("model_state", "optimizer_state", "step", "elapsed", "model_config", "train_config")
# SABConfig fields that decide the parameter shapes: a warm start must match them (the rest may differ).
SHAPE_FIELDS = ("model", "input_size", "output_size", "hidden_size", "scorer", "attn_dim", "head_hidden")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (must hold ``CHECKPOINT_KEYS``)."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; UserError if it is missing, truncated or foreign."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain containers only, so refuse anything that would
        # need to unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file (RuntimeError, EOFError, pickle errors)
        # only the first sentence: torch appends advice (e.g. to disable weights_only) that does not apply
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "").split(". ")[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise UserError(f"checkpoint {path} is not a sab-mips checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return state


def save_config(run_dir: str | os.PathLike, model_config: SABConfig, train_config: TrainConfig) -> None:
    """Atomically write ``config.json`` with both configs."""
    text = json.dumps({"model": model_config.to_dict(), "train": train_config.to_dict()}, indent=2, sort_keys=True)
    atomic_write_text(Path(run_dir) / CONFIG_FILE, text + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete JSON lines of a metrics log ([] if the file does not exist); a torn line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: str | os.PathLike, max_step: int) -> None:
    """Atomically rewrite a metrics log without the lines logged after ``max_step`` (and without torn lines).

    A run killed between two checkpoints has logged steps that the resumed run will redo; dropping them
    keeps exactly one line per step and split.
    """
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLog:
    """Append-only JSON-lines writer; each line is flushed so a killed run keeps everything logged so far."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def differences(saved: dict[str, Any], requested: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``name=saved (saved) vs requested (requested)`` for every field that differs, except ``ignore``."""
    return [f"{k}={saved.get(k)!r} (saved) vs {requested.get(k)!r} (requested)"
            for k in sorted(set(saved) | set(requested)) if k not in ignore and saved.get(k) != requested.get(k)]


def saved_configs(state: dict[str, Any]) -> tuple[SABConfig, TrainConfig]:
    """The configs a checkpoint was written with (fields added since then take their defaults)."""
    return SABConfig.from_saved(state["model_config"]), TrainConfig.from_dict(state["train_config"])


def check_resume(state: dict[str, Any], model_cfg: SABConfig, train_cfg: TrainConfig, run_dir: Path) -> None:
    """UserError unless the requested configs equal the saved ones, but for the fields in ``EXTENDABLE``."""
    saved_model, saved_train = saved_configs(state)
    diffs = (differences(saved_model.to_dict(), model_cfg.to_dict())
             + differences(saved_train.to_dict(), train_cfg.to_dict(), EXTENDABLE))
    if diffs:
        raise UserError(f"run directory {run_dir} holds a different config: {'; '.join(diffs)} "
                        f"(only {' and '.join(EXTENDABLE)} may change on --resume)")


def build(model_cfg: SABConfig, train_cfg: TrainConfig) -> tuple[torch.nn.Module, Task, SABConfig]:
    """The task, and the model with parameters initialised from the seed; input/output sizes come from the task."""
    task = get_task(train_cfg.task, train_cfg.data, train_cfg.permutation_seed)
    task.check_T(train_cfg.T)
    for name in ("T_min", "eval_T"):
        if getattr(train_cfg, name) is not None:
            try:
                task.check_T(getattr(train_cfg, name))
            except UserError as error:
                raise UserError(f"{name}: {error}") from None
    model_cfg = model_cfg.replace(input_size=task.input_size, output_size=task.output_size)
    torch.manual_seed(train_cfg.seed)
    return build_model(model_cfg), task, model_cfg


def refuse_existing_run(run_dir: Path) -> None:
    """UserError if ``run_dir`` already holds a run (a new run must not overwrite it)."""
    if (run_dir / CHECKPOINT_FILE).exists():
        raise UserError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                        f"or choose another --run-dir")


def start_run_dir(run_dir: Path) -> None:
    """Prepare the directory of a new run: refuse one that already holds a run, create it, and start its
    metrics log empty."""
    refuse_existing_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def resume_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      model_cfg: SABConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """Load the checkpoint of the run in ``run_dir`` into ``model`` and ``optimizer`` after checking that the
    requested configs may resume it (``check_resume``), and restore torch's RNG; returns the checkpoint."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"cannot resume: no checkpoint in {run_dir}")
    state = load_checkpoint(path)
    check_resume(state, model_cfg, train_cfg, run_dir)
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    if state.get("rng_state") is not None:
        torch.set_rng_state(state["rng_state"])
    return state


def saved_task(run_dir: str | Path) -> str | None:
    """The task of the run in ``run_dir``, read from its config.json (None when there is none or it cannot
    be read: loading the run then says why)."""
    try:
        return json.loads((Path(run_dir) / CONFIG_FILE).read_text()).get("train", {}).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, Task, SABConfig, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory: (model, task, model_cfg, train_cfg, checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    model_cfg, train_cfg = saved_configs(state)
    model, task, _ = build(model_cfg, train_cfg)
    model.load_state_dict(state["model_state"])
    use_kernel(model, train_cfg.kernel)
    return model, task, model_cfg, train_cfg, state


def warm_start(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_cfg: SABConfig,
               source: str | Path) -> None:
    """Load the weights and Adam state of the run (or checkpoint file) ``source`` into a fresh run.

    Adam's hyperparameters (lr, eps, amsgrad, ...) stay those ``optimizer`` was made with, this run's; everything that
    does not shape a parameter (T, retrieval, k_top, ...) may differ from the source run.
    """
    source = Path(source)
    state = load_checkpoint(source / CHECKPOINT_FILE if source.is_dir() else source)
    saved = saved_configs(state)[0].to_dict()
    diffs = differences({k: saved[k] for k in SHAPE_FIELDS}, {k: model_cfg.to_dict()[k] for k in SHAPE_FIELDS})
    if diffs:
        raise UserError(f"--init-from {source}: its model has other parameter shapes: {'; '.join(diffs)}")
    model.load_state_dict(state["model_state"])
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer_state"])  # its moments, and its hyperparameters, undone below
    for group, hyper in zip(optimizer.param_groups, own):
        group.update(hyper)
        if group.get("amsgrad"):  # a source trained without AMSGrad has no running maximum: start it at its moment
            for p in group["params"]:
                moments = optimizer.state.get(p, {})
                if "exp_avg_sq" in moments and "max_exp_avg_sq" not in moments:
                    moments["max_exp_avg_sq"] = moments["exp_avg_sq"].clone()
