"""Data-parallel plumbing: the same `train()` runs alone or under `torchrun`.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_distributed`
reads them and starts a process group (NCCL on GPUs, gloo on CPUs). Without them it returns a
single-process `DistInfo`, so there is one code path for a laptop, a GPU worker and a k8s Job.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; `rank == 0` is the only one that writes."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0 owns metrics, progress and checkpoint writes."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when collectives are needed (more than one rank)."""
        return self.world_size > 1


def default_device() -> str:
    """CUDA when present, else CPU: the same code runs on both."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment, or run alone.

    Idempotent: if a group already exists (a caller or test set it up) it is reused. The
    backend defaults to NCCL when CUDA is available and gloo otherwise.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available()
    if world_size <= 1 and not dist.is_initialized():
        return DistInfo(rank=0, world_size=1, local_rank=0, device=default_device())
    if use_cuda:
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        device = f"cuda:{torch.cuda.current_device()}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        chosen = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=chosen, rank=rank, world_size=world_size)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
    )


def current_dist_info(device: str | None = None) -> DistInfo:
    """Describe the running process group (if any) without creating one."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        world = dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        if device is None:
            if torch.cuda.is_available():
                device = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
            else:
                device = "cpu"
        return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)
    return DistInfo(rank=0, world_size=1, local_rank=0, device=device or default_device())


def cleanup_distributed(barrier_timeout_s: float = 60.0) -> None:
    """Leave the process group so the next run (or test) can create a fresh one.

    Every rank waits for the others first: rank 0 hosts the rendezvous store, and a rank still
    tearing down its gloo connections when rank 0's store closes aborts in C++ ("terminate
    called without an active exception", seen as a SIGABRT exit of rank 1). The wait is
    bounded, so a rank whose peer died still gets out.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=barrier_timeout_s))
        else:
            dist.barrier()
    dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: str) -> list[float]:
    """Sum a few floats over ranks (loss sums, counts); identity when running alone."""
    if not info.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def max_int(value: int, info: DistInfo, device: str) -> int:
    """The largest of every rank's `value` (stop codes), on every rank, so all ranks take the
    same decision and none hangs in a collective the others skipped."""
    if not info.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` (RNG and data-generator states) on every rank, in rank order."""
    if not info.is_distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
