"""The flags every training-like subcommand shares, derived from the config dataclasses.

Every ``SABConfig`` and ``TrainConfig`` field is a flag (``k_top`` -> ``--k-top``) whose help and type
come from the field itself (``config_base.option``), so a new config field is a new flag without touching
the CLI. Every flag defaults to None so that we know what the user set: precedence is
dataclass defaults < saved run config (``--resume``) < ``--config FILE`` < explicit flags.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config_base import field_names, help_of, value_type
from ..devices import DEVICE_HELP, THREADS_HELP
from ..errors import UserError
from ..io import read_json
from ..model import MODEL_FIELDS, SCORERS, SABConfig
from ..model.config import PRESETS, saved_fields
from ..tasks import IMAGE_TASKS, TASK_NAMES, get_task
from ..training import TrainConfig
from ..training.config import TEXT_FIELDS
from ..training.rundir import CONFIG_FILE

TASK_SIZED = ("input_size", "output_size")  # SABConfig fields set by the task, not by flags
ALWAYS_USED = ("model", "hidden_size", *TASK_SIZED)  # SABConfig fields every model reads
CHOICES = {"model": tuple(MODEL_FIELDS), "scorer": SCORERS, "task": TASK_NAMES, "preset": tuple(PRESETS)}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors, so ``main`` prints them as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog.split(' ', 1)[-1]}: {message}" if " " in self.prog else message)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag(name: str) -> str:
    """The command-line flag of a config field: ``k_top`` -> ``--k-top``, ``T`` -> ``--T``."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (``SABConfig`` or ``TrainConfig``) but those in ``skip``, on ``parser``
    (an ArgumentParser or an argument group); every flag defaults to None."""
    defaults = cls()
    for name in field_names(cls):
        if name in skip:
            continue
        kind = value_type(cls, name)
        help_text = help_of(cls, name)
        if name in CHOICES:
            help_text += f" Choices: {', '.join(CHOICES[name])}."
        if cls is SABConfig and name not in ALWAYS_USED:
            users = [m for m, used in MODEL_FIELDS.items() if name in used]
            help_text += f" Used by: {', '.join(users)}."
        help_text += f" (default: {getattr(defaults, name)})"
        parser.add_argument(flag(name), dest=name, type=parse_bool if kind is bool else kind, default=None,
                            metavar=name.upper(), help=help_text.replace("%", "%%"))


def add_compute_flags(parser: Any) -> None:
    """``--device`` and ``--threads``: where a subcommand that computes runs (``devices.resolve_device``,
    ``devices.set_threads``)."""
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def explicit_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given as flags (not None) in ``args``."""
    return {n: getattr(args, n) for n in field_names(cls) if getattr(args, n, None) is not None}


def split_config(data: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({model fields}, {train fields}) from a nested ``{"model": ..., "train": ...}`` or flat config object."""
    model_names, train_names = set(field_names(SABConfig)), set(field_names(TrainConfig))
    if set(data) <= {"model", "train"} and all(isinstance(v, dict) for v in data.values()):
        model, train = dict(data.get("model", {})), dict(data.get("train", {}))
        unknown = sorted(set(model) - model_names) + sorted(set(train) - train_names)
    else:
        model = {k: v for k, v in data.items() if k in model_names}
        train = {k: v for k, v in data.items() if k in train_names}
        unknown = sorted(set(data) - model_names - train_names)
    if unknown:
        raise UserError(f"{source}: unknown config field(s) {', '.join(unknown)}")
    return model, train


def read_config_file(path: str | Path, what: str = "--config file") -> tuple[dict[str, Any], dict[str, Any]]:
    """({model fields}, {train fields}) of a JSON config file."""
    return split_config(read_json(path, what), str(path))


def check_model_options(model_cfg: SABConfig, explicit: dict[str, Any], from_file: dict[str, Any], source: str) -> None:
    """Refuse a model option the chosen model would ignore (explicit flags, or non-default file values)."""
    used = set(MODEL_FIELDS[model_cfg.model]) | set(ALWAYS_USED)
    uses = ", ".join(flag(n) for n in MODEL_FIELDS[model_cfg.model]) or "none"
    for name in explicit:
        if name not in used:
            raise UserError(f"{flag(name)} has no effect on model '{model_cfg.model}' (its options: {uses})")
    defaults = SABConfig()
    for name, value in from_file.items():
        if name not in used and value != getattr(defaults, name):
            raise UserError(f"{name}={value!r} in {source} has no effect on model '{model_cfg.model}' (its options: {uses})")


# TrainConfig fields that only SAB reads: the memory-bounded engine and the audits of its retrieval.
SAB_ONLY_TRAIN_FIELDS = ("engine", "engine_chunk", "audit_every", "grad_cosine_every", "kernel")
TEXT_ONLY_TRAIN_FIELDS = TEXT_FIELDS  # TrainConfig fields of the text task
SAB_TEXT_FIELDS = ("memory", "memory_slots", "refresh_every", "refresh_below")  # of the text task's SAB memory
# TrainConfig fields the text task does not read: lengths of generated sequences, their eval batches, the
# engine (a window is short), the exact-gradient audit and warm starts (not implemented for streams)
SYNTHETIC_ONLY_TRAIN_FIELDS = ("T", "T_min", "T_draw", "eval_T", "eval_batches", "engine", "engine_chunk",
                               "grad_cosine_every", "init_from")


def check_train_options(model_cfg: SABConfig, train_cfg: TrainConfig, explicit: dict[str, Any],
                        from_file: dict[str, Any], source: str) -> None:
    """Refuse a training option the run would not read (explicit flags, or non-default file values): one that
    only SAB reads, for another model; one of the text task, for another task; one of the synthetic tasks
    (or of the engine), for the text task."""
    defaults = TrainConfig()

    def given(name: str) -> str | None:
        if name in explicit:
            return flag(name)
        if name in from_file and from_file[name] != getattr(defaults, name):
            return f"{name}={from_file[name]!r} in {source}"
        return None

    text, sab = train_cfg.task == "text", model_cfg.model == "sab"
    permuted = IMAGE_TASKS.get(train_cfg.task, False)
    rules = ((("permutation_seed",), not permuted, f"task '{train_cfg.task}' (only pixels-permuted reads it)"),
             (TEXT_ONLY_TRAIN_FIELDS, not text, f"task '{train_cfg.task}' (only the text task reads it)"),
             (SYNTHETIC_ONLY_TRAIN_FIELDS, text, "task 'text' (only the synthetic tasks read it)"),
             (SAB_ONLY_TRAIN_FIELDS, not sab, f"model '{model_cfg.model}' (only model 'sab' has an engine, a "
                                              f"kernel and retrieval audits)"),
             (SAB_TEXT_FIELDS, text and not sab, f"model '{model_cfg.model}' (only model 'sab' has a memory)"))
    for names, applies, what in rules:
        for name in names if applies else ():
            where = given(name)
            if where is not None:
                raise UserError(f"{where} has no effect on {what}")


def merge_configs(explicit_model: dict[str, Any], explicit_train: dict[str, Any], config_file: str | None = None,
                  resume_dir: str | Path | None = None) -> tuple[SABConfig, TrainConfig]:
    """Defaults < the config saved in ``resume_dir`` < ``config_file`` < explicit flags; validated.

    ``input_size`` and ``output_size`` come from the task; giving other values is an error.
    """
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if resume_dir is not None and (Path(resume_dir) / CONFIG_FILE).is_file():
        model_values, train_values = read_config_file(Path(resume_dir) / CONFIG_FILE, "saved config")
        model_values = saved_fields(model_values)
    file_model: dict[str, Any] = {}
    file_train: dict[str, Any] = {}
    if config_file:
        file_model, file_train = read_config_file(config_file)
        model_values.update(file_model)
        train_values.update(file_train)
    model_values.update(explicit_model)
    train_values.update(explicit_train)

    if train_values.get("task") in IMAGE_TASKS and "T" not in train_values:
        # an image task's length is its images' pixel count: read from the data, not a flag to repeat
        train_values["T"] = get_task(train_values["task"], train_values.get("data")).min_T
    train_cfg = TrainConfig.from_dict(train_values)
    if train_cfg.task != "text":  # the text task sizes the model from its corpus's vocabulary (``stream``)
        task = get_task(train_cfg.task, train_cfg.data, train_cfg.permutation_seed)
        for name, size in (("input_size", task.input_size), ("output_size", task.output_size)):
            if model_values.get(name, size) != size:
                raise UserError(f"{name}={model_values[name]} does not match task '{task.name}' ({size}); "
                                f"it is set by the task, leave it out")
            model_values[name] = size
    file_model = {k: v for k, v in file_model.items() if k not in TASK_SIZED}
    model_cfg = SABConfig.from_dict(model_values)
    check_model_options(model_cfg, explicit_model, file_model, f"--config {config_file}")
    check_train_options(model_cfg, train_cfg, explicit_train, file_train, f"--config {config_file}")
    return model_cfg, train_cfg


def configs_from_args(args: argparse.Namespace) -> tuple[SABConfig, TrainConfig]:
    """``merge_configs`` for a parsed ``train`` command line (``--config``, ``--resume`` and ``--run-dir``)."""
    return merge_configs(explicit_values(args, SABConfig), explicit_values(args, TrainConfig),
                         getattr(args, "config", None), args.run_dir if getattr(args, "resume", False) else None)
