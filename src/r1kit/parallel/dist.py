"""Distributed helpers: the same code runs as one process or under `torchrun` (gloo on CPU, NCCL on GPU).

Each rank computes gradients of its share of a loss whose denominator counts the *global* batch; FSDP2
(parallel/fsdp.py) sums them over ranks. One process and N processes therefore take the same step for the same
global batch (tests/test_distributed.py). The few floats of the loop's bookkeeping (counts, metrics) travel on
gloo, CPU tensors, also on GPU machines: the process group is "cpu:gloo,cuda:nccl" there.

A rank that dies makes the others fail instead of waiting forever: collectives time out after
R1KIT_DIST_TIMEOUT_S seconds (default 1800), and on NCCL TORCH_NCCL_ASYNC_ERROR_HANDLING (torchrun's agent
sets 1 when it is unset, r1kit 3 when launched otherwise; both tear the process down) turns a failed or timed-out
collective into an exit, which torchrun then reports as the job's failure. Evaluations are sharded over the
ranks, so no rank waits on another's long job.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process.

    `device` is the run's requested device (auto | cpu | cuda): NCCL joins only when the run will use CUDA, so
    `--device cpu` on a GPU machine stays on gloo. The device itself is chosen by parallel/engine.py."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        timeout = datetime.timedelta(seconds=float(os.environ.get("R1KIT_DIST_TIMEOUT_S", "1800")))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over ranks (identity on one process)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: list[float]) -> list[float]:
    """Elementwise maximum of a few floats over ranks (identity on one process)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """Gather a picklable object from every rank (a one-item list on one process)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
