"""The ``sab-mips`` command line: train, eval, plot, compare, tune, info, bench.

Training flags are derived from the fields of ``SABConfig`` and ``TrainConfig`` (``k_top`` -> ``--k-top``),
with help taken from their docstrings, so a new config field is a new flag without touching this file.
Every flag defaults to None so that we know what the user set: precedence is
dataclass defaults < saved run config (``--resume``) < ``--config FILE`` < explicit flags.
Any user mistake ends as one line ``sab-mips: error: ...`` on stderr and exit status 2.

Example:
    $ sab-mips train --task copy --T 20 --model sab --k-top 5 --run-dir runs/copy20 --time-budget 180
    $ sab-mips eval --run runs/copy20 --T 100
    $ sab-mips plot --run runs/copy20
    $ sab-mips compare --task copy --T 20 --out reports/copy20 --retrieval exact "alsh:K=6,L=32"
    $ sab-mips tune --backend faiss:HNSW32,exact_below=0 --memories mem.npz --grid efSearch=16,32,64
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import MODEL_FIELDS, SCORERS, SABConfig, TrainConfig
from .errors import UserError

PROG = "sab-mips"
TASK_SIZED = ("input_size", "output_size")  # SABConfig fields set by the task, not by flags
ALWAYS_USED = ("model", "hidden_size", *TASK_SIZED)  # SABConfig fields every model reads
BENCHMARKS = {"step": "benchmarks.step", "retrieval": "benchmarks.retrieval", "heavy": "benchmarks.heavy"}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


TYPES = {"int": int, "float": float, "str": str, "bool": _bool}  # argparse parsers by annotation


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become UserError, so ``main`` prints them as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog.split(' ', 1)[-1]}: {message}" if " " in self.prog else message)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` section of a dataclass docstring."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        match = re.match(r"^\s{8}([\w, ]+): (.*)$", line)
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for name in names:
                docs[name] = match.group(2).strip()
        elif line.strip() and names:
            for name in names:
                docs[name] += " " + line.strip()
    return docs


def flag(name: str) -> str:
    """The command-line flag of a config field: ``k_top`` -> ``--k-top``, ``T`` -> ``--T``."""
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    docs = _attribute_docs(cls)
    choices = {"model": tuple(MODEL_FIELDS), "scorer": SCORERS}
    if cls is TrainConfig:
        from experiments.tasks import TASKS

        choices["task"] = tuple(TASKS)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = str(field.type).split("|")[0].strip()  # "int | None" -> "int"
        help_text = docs.get(field.name, "").replace("``", "")
        if field.name in choices:
            help_text += f" Choices: {', '.join(choices[field.name])}."
        if cls is SABConfig and field.name not in ALWAYS_USED:
            users = [m for m, used in MODEL_FIELDS.items() if field.name in used]
            help_text += f" Used by: {', '.join(users)}."
        help_text += f" (default: {field.default})"
        parser.add_argument(flag(field.name), dest=field.name, type=TYPES[kind], default=None,
                            metavar=field.name.upper(), help=help_text.replace("%", "%%"))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands train, eval, plot, compare, tune, info, bench)."""
    parser = _Parser(prog=PROG, description="Sparse Attentive Backtracking with MIPS retrieval: "
                                            "train, evaluate and plot runs; benchmark steps and retrieval.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model on a task (or resume a run)",
                           description="Train a model on a synthetic task. Flags override --config; on --resume "
                                       "the saved config is the base and only --steps, --time-budget, "
                                       "--audit-every and --grad-cosine-every may differ.")
    model_group = train.add_argument_group("model (SABConfig)")
    _add_config_flags(model_group, SABConfig, skip=TASK_SIZED)
    train_group = train.add_argument_group("training (TrainConfig)")
    _add_config_flags(train_group, TrainConfig)
    run = train.add_argument_group("run")
    run.add_argument("--run-dir", required=True, help="directory for config.json, metrics.jsonl, checkpoint.pt")
    run.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    run.add_argument("--config", metavar="FILE", help='JSON config: {"model": {...}, "train": {...}} or one flat object')
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--record-memories", metavar="FILE",
                     help="after training, save the keys W_k m_i and queries the index saw (.npz) for retrieval benchmarks")
    run.add_argument("--record-count", type=int, default=100_000, metavar="N",
                     help="collect at least this many keys for --record-memories (default: 100000)")

    evaluate = sub.add_parser("eval", help="evaluate a trained run (at any T: length transfer)",
                              description="Evaluate a run's checkpoint; the result is printed and appended to the "
                                          "run's metrics.jsonl as an eval line with \"source\": \"sab-mips eval\".")
    evaluate.add_argument("--run", required=True, metavar="DIR", help="run directory")
    evaluate.add_argument("--T", type=int, help="length parameter (default: the run's eval T)")
    evaluate.add_argument("--batches", type=int, help="number of batches (default: the run's eval_batches)")
    evaluate.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch_size)")
    evaluate.add_argument("--seed", type=int, help="seed of the eval stream (default: the run's seed)")
    evaluate.add_argument("--retrieval", metavar="FACTORY_STRING",
                          help="SAB: search with this index instead of the trained one, e.g. exact or "
                               "faiss:HNSW32,efSearch=128 (indexes are rebuilt per pass: any parameter may change)")

    plot = sub.add_parser("plot", help="learning curves and attention map as PNG",
                          description="Write learning_curves.png and (for models with attention) attention.png.")
    plot.add_argument("--run", required=True, metavar="DIR", help="run directory")
    plot.add_argument("--out", metavar="DIR", help="output directory (default: the run directory)")

    from . import compare, tune

    compare.configure_parser(sub.add_parser(
        "compare", help="train one SAB run per retrieval setting and report them side by side",
        description=compare.__doc__.split("\n\n")[1].replace("``", "")))
    tune.configure_parser(sub.add_parser(
        "tune", help="sweep index parameters on recorded memories: recall-vs-time frontier, recommendation",
        description=tune.__doc__.split("\n\n")[1].replace("``", "")))

    sub.add_parser("info", help="versions, device, threads and available retrieval backends",
                   description="Report what can run here.")

    bench = sub.add_parser("bench", help="benchmarks: 'bench step|retrieval|heavy ...'",
                           description="Run a benchmark; arguments after its name go to it "
                                       "(see 'sab-mips bench step --help').")
    bench.add_argument("which", choices=tuple(BENCHMARKS), help="benchmark to run")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    return parser


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a JSON object")
    return data


def _split_config(data: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({model fields}, {train fields}) from a nested or flat config object."""
    model_names = {f.name for f in dataclasses.fields(SABConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
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


def _check_model_options(model_cfg: SABConfig, explicit: dict[str, Any], from_file: dict[str, Any], source: str) -> None:
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


def configs_from_args(args: argparse.Namespace) -> tuple[SABConfig, TrainConfig]:
    """Merge defaults, the saved run config (on --resume), --config and explicit flags; validate."""
    from experiments.tasks import get_task

    model_names = [f.name for f in dataclasses.fields(SABConfig) if f.name not in TASK_SIZED]
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    explicit_model = {n: getattr(args, n) for n in model_names if getattr(args, n) is not None}
    explicit_train = {n: getattr(args, n) for n in train_names if getattr(args, n) is not None}

    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    saved_path = Path(args.run_dir) / "config.json"
    if args.resume and saved_path.is_file():
        model_values, train_values = _split_config(_read_json(saved_path, "saved config"), str(saved_path))
    file_model: dict[str, Any] = {}
    if args.config:
        file_model, file_train = _split_config(_read_json(args.config, "--config file"), args.config)
        model_values.update(file_model)
        train_values.update(file_train)
    model_values.update(explicit_model)
    train_values.update(explicit_train)

    train_cfg = TrainConfig.from_dict(train_values)
    task = get_task(train_cfg.task)
    for name, size in (("input_size", task.input_size), ("output_size", task.output_size)):
        if model_values.get(name, size) != size:
            raise UserError(f"{name}={model_values[name]} does not match task '{task.name}' ({size}); "
                            f"it is set by the task, leave it out")
        model_values[name] = size
    file_model = {k: v for k, v in file_model.items() if k not in TASK_SIZED}
    model_cfg = SABConfig.from_dict(model_values)
    _check_model_options(model_cfg, explicit_model, file_model, f"--config {args.config}")
    return model_cfg, train_cfg


def cmd_train(args: argparse.Namespace) -> int:
    from .train import format_summary, train

    if args.record_count < 1:
        raise UserError(f"--record-count must be >= 1, got {args.record_count}")
    model_cfg, train_cfg = configs_from_args(args)
    print(f"run {args.run_dir}: {json.dumps({'model': model_cfg.to_dict(), 'train': train_cfg.to_dict()})}")
    summary = train(model_cfg, train_cfg, args.run_dir, resume=args.resume, progress=not args.no_progress,
                    record_memories=args.record_memories, record_count=args.record_count)
    print(format_summary(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import METRICS_FILE, MetricsLog
    from .train import evaluate, load_run

    model, task, model_cfg, train_cfg, state = load_run(args.run)
    retrieval: dict[str, str] = {}
    if args.retrieval is not None:
        if model_cfg.model != "sab":
            raise UserError(f"--retrieval applies to model 'sab' only; this run is model '{model_cfg.model}'")
        model.set_retrieval(args.retrieval)
        retrieval = {"retrieval": args.retrieval}
    T = args.T if args.T is not None else (train_cfg.eval_T or train_cfg.T)
    batches = args.batches if args.batches is not None else train_cfg.eval_batches
    batch_size = args.batch_size if args.batch_size is not None else train_cfg.batch_size
    seed = args.seed if args.seed is not None else train_cfg.seed
    for name, value in (("--batches", batches), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    metrics = evaluate(model, task, T, batches, seed, batch_size)
    with MetricsLog(Path(args.run) / METRICS_FILE) as log:
        log.write({"split": "eval", "step": int(state["step"]), "T": T, **metrics, "source": "sab-mips eval",
                   "seed": seed, "batches": batches, "batch_size": batch_size, **retrieval})
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    searched = f" retrieval={args.retrieval}" if args.retrieval is not None else ""
    print(f"eval {args.run} step={state['step']} task={task.name} T={T} (trained at T={train_cfg.T}){searched}: {shown}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import METRICS_FILE, read_metrics
    from .plots import plot_attention_map, plot_learning_curves, plot_retrieval
    from .train import batch_generator, load_run

    model, task, model_cfg, train_cfg, state = load_run(args.run)
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{task.name} T={train_cfg.T}, model {model_cfg.model}, step {state['step']}"
    records = read_metrics(Path(args.run) / METRICS_FILE)
    curves = plot_learning_curves(records, out / "learning_curves.png", task.primary, title)
    print(f"wrote {curves}")
    if any("retrieval_seconds" in r for r in records):
        print(f"wrote {plot_retrieval(records, out / 'retrieval.png', f'{title}, retrieval {model_cfg.retrieval}')}")
    T = train_cfg.eval_T or train_cfg.T
    x, _ = task.make_batch(T, 1, batch_generator(train_cfg.seed, 0, "eval"))
    model.eval()
    with torch.no_grad():
        _, record = model(x, return_attention=True)
    if record is None:
        print(f"note: model '{model_cfg.model}' has no attention; attention map skipped")
    else:
        attention = record.attention_map(b=0, T=x.shape[1])
        path = plot_attention_map(attention, out / "attention.png", f"attention, {title}, eval T={T}")
        print(f"wrote {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import info_text

    print(info_text())
    return 0


def run_benchmark(which: str, argv: list[str]) -> int:
    """Hand ``argv`` to ``benchmarks.<which>.main`` (imported only now: benchmarks may need extra packages)."""
    try:
        module = importlib.import_module(BENCHMARKS[which])
    except ImportError as exc:
        raise UserError(f"benchmark '{which}' is unavailable: {exc}") from None
    return int(module.main(argv) or 0)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import run_compare

    return run_compare(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import run_tune

    return run_tune(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "info": cmd_info, "compare": cmd_compare,
            "tune": cmd_tune,
            "bench": lambda args: run_benchmark(args.which, list(args.args))}


def _main(argv: list[str]) -> int:
    import torch

    # Saturated gates of an untrained SAB on long sequences produce denormal floats, which slow CPU
    # arithmetic 5-100x; flushing them to zero changes no result that matters at float32 precision.
    torch.set_flush_denormal(True)
    # Dispatch benchmarks before argparse sees their flags, so 'bench step --help' reaches the benchmark.
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHMARKS:
        return run_benchmark(argv[1], argv[2:])
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sab-mips``; returns the exit status (2 for user errors, printed as one line)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except (UserError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and argparse's own exits
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
