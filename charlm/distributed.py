"""Data-parallel training on PyTorch's own engine: torch.distributed, launched by torchrun.

`torchrun --nproc-per-node N -m charlm train ...` starts N copies of charlm; each finds
its rank in the environment torchrun sets, joins the process group (nccl on CUDA, gloo on
CPU) and takes its own disjoint set of the parallel text streams. DistributedDataParallel
averages the gradients, so N processes of `--batch-size B` train like one process of
batch N*B. Rank 0 alone prints, validates and writes checkpoints; every decision to stop
(a stop reached, a time budget spent, Ctrl-C or SIGTERM) is taken by all ranks together,
so none is left waiting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; world 1 is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (any picklable object; only used at start-up)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def any_rank(self, flag: int, device: torch.device) -> int:
        """The largest of every rank's flag: one rank asking to stop stops them all."""
        if not self.active:
            return flag
        t = torch.tensor([flag], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_streams(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (layers, batch, hidden) state along the stream axis."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process.

    Returns this rank's place and its device (each rank on a machine gets its own GPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank), device


def shutdown(ctx: Dist) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
