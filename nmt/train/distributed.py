"""Data-parallel training across processes started by ``torchrun`` (torch.distributed DDP).

There is no launcher of our own: ``torchrun --nproc_per_node N -m cli ...`` (or
``torchrun ... $(which nmt) train ...``) sets RANK, WORLD_SIZE and LOCAL_RANK, and
:func:`init_distributed` joins the process group (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process logs, validates and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_minutes: float = 60.0) -> DistEnv:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        timeout_minutes: how long a collective waits for the other processes before it
            fails (torch's defaults, 30 minutes for gloo and 10 for NCCL, are too short for
            rank 0 preparing a large corpus while the others wait).

    Returns a single-process :class:`DistEnv` when WORLD_SIZE is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return env


def sum_across(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (identity without DDP)."""
    if not env.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(obj: object, env: DistEnv) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP)."""
    if not env.enabled:
        return [obj]
    out: list[object] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(env: DistEnv) -> None:
    """Leave the process group."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait until every process gets here (no-op without DDP)."""
    if env.enabled:
        dist.barrier()
