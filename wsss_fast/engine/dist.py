"""Process-group helpers for ``torchrun`` (DistributedDataParallel) runs.

A step started by ``torchrun --nproc_per_node=G wsss-fast train-cls ...`` sees ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment; :func:`init_distributed` then joins
the process group (NCCL on CUDA, gloo on the CPU) and picks ``cuda:LOCAL_RANK``, also for
``G = 1`` (as torchvision's reference scripts do: one process under torchrun runs the same
DistributedDataParallel path as several). Started normally, everything degrades to one
process and the collective helpers are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist



def resolve_device(cfg: dict) -> torch.device:
    """The device named by ``cfg["device"]`` (``auto`` picks CUDA when present)."""
    name = str(cfg["device"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config device '{name}' asks for CUDA, but no CUDA device is available")
    return dev


@dataclass
class DistContext:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    in_group: bool = False  # a process group joins the ranks (collectives, DDP)
    owns_group: bool = False  # this context created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the ranks work through a process group (DistributedDataParallel)."""
        return self.in_group

    @property
    def backend(self) -> str | None:
        """The process group's backend (``nccl`` / ``gloo``), None outside a group."""
        return dist.get_backend() if self.in_group else None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a group)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of numbers over the ranks."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def env_rank_world() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the environment (``(0, 1, 0)`` when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def rank_device(cfg: dict) -> torch.device:
    """This process's device for work sharded without a process group (make-cam,
    make-sem-seg): ``cfg["device"]``, or under torchrun with an unindexed CUDA device
    ``cuda:LOCAL_RANK`` (modulo the visible GPUs)."""
    device = resolve_device(cfg)
    _, world, local = env_rank_world()
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    return device


def init_distributed(cfg: dict) -> DistContext:
    """Join the process group when started by ``torchrun`` (any ``WORLD_SIZE``) or when
    ``WORLD_SIZE > 1``.

    The device comes from ``cfg["device"]``; under torchrun with CUDA each process takes
    ``cuda:LOCAL_RANK``. The backend is NCCL for CUDA devices and gloo otherwise.
    """
    rank, world, local = env_rank_world()
    device = resolve_device(cfg)
    group = world > 1 or dist.is_torchelastic_launched()
    if group and device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=device, in_group=group)
    if group:
        _join(ctx, "nccl" if device.type == "cuda" else "gloo")
    return ctx


def _join(ctx: DistContext, backend: str) -> None:
    """Join the process group with ``backend`` (``ctx`` then owns it), or adopt the existing one."""
    if dist.is_initialized():
        ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
    else:
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
        ctx.owns_group = True


@contextmanager
def object_group() -> Iterator[DistContext | None]:
    """Under ``torchrun`` (``WORLD_SIZE > 1`` and ``MASTER_ADDR`` set), a gloo process group
    for exchanging Python objects between the ranks of a step that otherwise works without one
    (make-sem-seg); ``None`` elsewhere. Joined and left here unless a group already exists
    (which is then used as it is).

    Example:
        >>> with object_group() as ctx:
        ...     parts = ctx.all_gather_object(part) if ctx else [part]
    """
    rank, world, local = env_rank_world()
    if world <= 1 or "MASTER_ADDR" not in os.environ:
        yield None
        return
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, in_group=True)
    _join(ctx, "gloo")
    try:
        yield ctx
    finally:
        ctx.close()
