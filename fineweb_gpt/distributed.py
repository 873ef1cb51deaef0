"""Processes under torchrun: who we are, rank-0 printing, the few collectives the loop needs.

`with distributed.setup(device, backend) as env:` works the same for one process and for DDP: it
initialises the process group when torchrun launched us and destroys it however the block ends.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    device: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    ddp: bool = False  # launched by torchrun (even with one process): the model is wrapped in DDP

    @property
    def master(self) -> bool:
        return self.rank == 0

    def print0(self, *args, **kwargs) -> None:
        if self.master:
            print(*args, **kwargs, flush=True)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            dist.all_reduce(value)  # SUM: gloo has no AVG
        return value

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.all_sum(value) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any: every rank takes the same branch."""
        return bool(self.all_sum(torch.tensor([int(flag)], dtype=torch.int32, device=self.device)).item())

    def gather(self, obj: Any) -> list:
        """Every rank's obj, in rank order (on every rank)."""
        if not self.ddp:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launched_by_torchrun() -> bool:
    return int(os.environ.get("RANK", -1)) != -1


def prints_errors() -> bool:
    """Whether this process reports a user error: one process per machine, so the message appears once
    in each node's log rather than once per GPU, glued together."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0


@contextmanager
def setup(device: str, backend: str = "auto") -> Iterator[Env]:
    """The process's Env; under torchrun, with the process group up for the whole block."""
    if not launched_by_torchrun():
        yield Env(device)
        return
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield Env(device, rank, local_rank, world_size, ddp=True)
    finally:
        # Objects still holding the group (a DDP wrapper and its reference cycles) must be gone first: a
        # gloo group that outlives this call is torn down during interpreter exit, where its threads
        # abort the process (SIGABRT, "terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()
