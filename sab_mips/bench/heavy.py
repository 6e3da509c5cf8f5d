"""Benchmark: a retrieval-heavy SAB training update, exact against approximate retrieval.

SAB-MIPS pays off only when searching the memory is a large part of an update, i.e. when a sequence holds
many slots (long T, small ``k_att``). This benchmark takes a *trained* SAB run (its memories are what the
index will really hold), runs it at the lengths given by ``--T`` and times one full training update
(forward, backward, Adam) per retrieval setting, on the same batch and from the same parameters:

* ``s/update`` and ``x exact``: the update's wall time and its ratio to exact retrieval's, the median of
  ratios taken within a round (settings are timed in interleaved rounds: this kind of machine is noisy);
* ``in index``: seconds of that update spent in index search and add;
* ``recall`` / ``mass``: recall@k_top and attention mass recovered (``sab_mips.retrieval.metrics``) over
  every ``--audit-every``-th attention step of one extra, untimed forward pass; "–" (None in the JSON)
  where nothing was audited, e.g. exact retrieval, which is exact by construction.

A setting is worth using where ``x exact`` < 1 *and* recall is acceptable; the smallest such N is the
crossover.

Run: ``sab-mips bench heavy --run runs/copy100_sab --T 5000 15000 --retrieval exact "faiss:IVF64,nprobe=8"``
(``--help`` lists the options). Prints a table and writes JSON (atomically). Never asserts.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from ..devices import DEVICE_HELP, resolve_device, synchronize
from ..errors import UserError
from ..model import PassOptions, build_model, check_retrieval
from ..tasks import batch_generator
from ..training import load_run
from ..training.rundir import CHECKPOINT_FILE
from .common import bench_command, prepare, save_rows


class HeavyUpdate:
    """One training update of a SAB model on a fixed batch, repeatable from the same parameters."""

    def __init__(self, model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.initial = copy.deepcopy(model.state_dict())

    def time(self, retrieval: str) -> tuple[float, float]:
        """(seconds of the update, seconds of it spent in the index) with ``retrieval``."""
        self.model.load_state_dict(self.initial)
        self.optimizer.state.clear()
        synchronize(self.x.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model.run(self.x, PassOptions(retrieval=retrieval))
        self.loss_fn(out.logits, self.y).backward()
        self.optimizer.step()
        synchronize(self.x.device)
        seconds = time.perf_counter() - start
        return seconds, out.stats.search_seconds + out.stats.add_seconds

    @torch.no_grad()
    def audit(self, retrieval: str, every: int) -> dict[str, float]:
        """Recall@k_top and mass recovered over every ``every``-th attention step; None where nothing was
        audited (exact retrieval is exact by construction and not audited: no value was measured)."""
        self.model.load_state_dict(self.initial)
        metrics = self.model.run(self.x, PassOptions(retrieval=retrieval, audit_every=every)).stats.as_metrics()
        return {"recall": metrics.get("recall"), "mass_recovered": metrics.get("mass_recovered")}


def build_update(run: Path, T: int, batch_size: int, k_att: int | None,
                 device: torch.device = torch.device("cpu")) -> tuple[HeavyUpdate, int]:
    """The run's model (k_att replaced if given) on one eval batch at length T; and slots per sequence."""
    model, task, model_cfg, train_cfg, _ = load_run(run)
    if model_cfg.model != "sab":
        raise UserError(f"bench heavy needs a SAB run, {run} holds model '{model_cfg.model}'")
    if k_att is not None:  # the parameters do not depend on k_att: the same weights, more or fewer slots
        state = model.state_dict()
        model = build_model(model_cfg.replace(k_att=k_att))
        model.load_state_dict(state)
    task.check_T(T)
    x, y = task.make_batch(T, batch_size, batch_generator(train_cfg.seed, 0, "eval"))
    slots = x.shape[1] // model.config.k_att
    return HeavyUpdate(model.to(device), task.loss, x.to(device), y.to(device)), slots


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for T in args.T:
        update, slots = build_update(args.run, T, args.batch_size, args.k_att, resolve_device(args.device))
        update.time(args.retrieval[0])  # warm-up
        times = {spec: [] for spec in args.retrieval}
        in_index = {spec: [] for spec in args.retrieval}
        for r in range(args.rounds):
            for spec in args.retrieval:
                seconds, index_seconds = update.time(spec)
                times[spec].append(seconds)
                in_index[spec].append(index_seconds)
            print(f"  T={T} round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{spec} {times[spec][-1]:.2f}s" for spec in args.retrieval), flush=True)
        for spec in args.retrieval:
            audit = update.audit(spec, args.audit_every)
            rows.append({"T": T, "slots": slots, "retrieval": spec,
                         "sec_per_update": statistics.median(times[spec]),
                         "ratio_to_exact": statistics.median(a / b for a, b in zip(times[spec], times["exact"])),
                         "index_seconds": statistics.median(in_index[spec]), **audit,
                         "sec_per_update_all_rounds": times[spec]})
    return rows


def measured(value: float | None, width: int) -> str:
    """A measured fraction to 3 decimals, or "–" where none was measured (never a perfect score)."""
    return f"{'–' if value is None else f'{value:.3f}':>{width}s}"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'T':>7s} {'slots':>6s} {'retrieval':50s} {'s/update':>9s} {'x exact':>8s} {'in index':>9s} "
             f"{'recall':>7s} {'mass':>6s}"]
    for r in rows:
        lines.append(f"{r['T']:7d} {r['slots']:6d} {r['retrieval']:50s} {r['sec_per_update']:9.2f} "
                     f"{r['ratio_to_exact']:8.2f} {r['index_seconds']:9.2f} {measured(r['recall'], 7)} "
                     f"{measured(r['mass_recovered'], 6)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sab-mips bench heavy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained SAB run directory")
    parser.add_argument("--T", type=int, nargs="+", default=[5000, 15000, 50000], help="task lengths")
    parser.add_argument("--retrieval", nargs="+", required=True, metavar="FACTORY_STRING",
                        help="settings to time; exact is added first as the baseline if missing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--k-att", type=int, default=None, help="write a slot every k_att steps (default: the run's)")
    parser.add_argument("--rounds", type=int, default=2, help="timed updates per setting, interleaved")
    parser.add_argument("--audit-every", type=int, default=200, help="audit every n-th attention step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/heavy.json"), help="JSON output file")
    args = parser.parse_args(argv)
    if min(args.T) < 1 or args.rounds < 1 or args.batch_size < 1 or args.audit_every < 1:
        parser.error("--T, --rounds, --batch-size and --audit-every must be >= 1")
    if not (args.run / CHECKPOINT_FILE).is_file():
        parser.error(f"--run {args.run}: no {CHECKPOINT_FILE} there (a directory written by sab-mips train)")
    if args.k_att is not None and args.k_att < 1:
        parser.error("--k-att must be >= 1")
    args.retrieval = list(dict.fromkeys(["exact", *args.retrieval]))
    try:
        scorer = load_run(args.run)[2].scorer  # every setting must be one the run's scorer can be served by
        for spec in args.retrieval:
            check_retrieval(spec, scorer)
    except UserError as exc:
        parser.error(str(exc))
    prepare(args.threads)
    print(f"retrieval-heavy update: run {args.run}, B={args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows = run(args)
    print(format_table(rows))
    save_rows(args, rows, bench_command("heavy", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
