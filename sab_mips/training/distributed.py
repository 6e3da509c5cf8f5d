"""Data-parallel training across processes started by ``torchrun`` (one process per device or CPU share).

``torchrun --nproc-per-node=N -m sab_mips train ...`` starts N copies of the training loop; each reads its
rank and the world size from the environment ``torchrun`` sets, and ``Distributed.from_env`` joins the
process group (``gloo`` on CPU, ``nccl`` on CUDA). Then:

* every process draws the same batch i (a pure function of the seed and i) and keeps its own B/N rows:
  N processes with batch B/N each compute the update of one process with batch B;
* each process keeps the memories and indexes of its own sequences (a sequence never spans processes);
* after each update's backward the gradients are averaged with one ``all_reduce`` per parameter, so every
  process applies the same update. (Why not the ``DistributedDataParallel`` wrapper: its reducer assumes
  one backward per forward, and SAB's memory-bounded engine runs one backward per chunk; averaging after
  the whole backward is what DDP computes, without its overlap of communication and backward.)
* rank 0 alone writes metrics, checkpoints and plots; every rank resumes from rank 0's checkpoint; the
  loop stops at the same step everywhere (rank 0's clock decides a time budget).

Multi-node: the same command on every node with ``--nnodes``, ``--node-rank`` and a rendezvous endpoint
(docs/gpu-and-distributed.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class Distributed:
    """This process's place among ``world`` processes (``rank`` 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this object joined the process group, so it leaves it (``close``)

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group ``torchrun`` described in the environment (WORLD_SIZE > 1), or stay alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed; run without torchrun")
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns_group)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files and prints progress (rank 0)."""
        return self.rank == 0

    def shard(self, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This rank's rows [rank·B/N, (rank+1)·B/N) of a batch-first tensor of the whole batch."""
        if not self.active:
            return tensor
        size = batch_size // self.world
        return tensor[self.rank * size : (self.rank + 1) * size]

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise UserError(f"batch_size {batch_size} does not split over {self.world} processes; use a multiple")

    def average_gradients(self, parameters) -> None:
        """Replace every gradient by its mean over the processes (a missing gradient counts as zero)."""
        if not self.active:
            return
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over processes of each value (every rank passes the same keys)."""
        if not self.active or not values:
            return values
        stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return dict(zip(values, (stacked / self.world).tolist()))

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. whether the time budget is spent)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def same_parameters(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters (and buffers)."""
        if self.active:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """After a finished run: wait for every rank, then leave the process group this object joined. A rank
        that exits while another still uses the group can abort in gloo's threads ("terminate called
        without an active exception")."""
        if self.active and self.owns_group:
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False
