"""The process group that ``torchrun`` describes, and this process's place in it.

torchrun starts one process per device and tells each, through the environment,
its ``RANK`` among ``WORLD_SIZE`` processes, its ``LOCAL_RANK`` on the node and
where to meet (``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env` joins
that group with the backend ``cpu:gloo,cuda:nccl`` when CUDA is available (each
collective goes to NCCL for CUDA tensors and to Gloo for CPU tensors, so CPU and
GPU runs share one code path) and ``gloo`` otherwise. A plain ``osad train``
(no torchrun, or ``--nproc_per_node=1``) creates no process group at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from osad.errors import ConfigError, OsadError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The current process group's view of this process; ``World()`` without a group."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def is_main() -> bool:
    """True on rank 0, and in a single-process run: the process that logs and writes."""
    return world().is_main


def backend(cuda: bool) -> str:
    """NCCL for CUDA tensors when CUDA is there, Gloo for CPU tensors always."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_from_env(env: Mapping[str, str] = os.environ) -> World:
    """Join the process group that torchrun's variables in ``env`` describe.

    With ``WORLD_SIZE`` unset or 1 nothing is created and a single-process
    :class:`World` comes back; an existing group is reused.
    """
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available()
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if cuda and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend(cuda))
    return world()


def process_device(device: torch.device) -> torch.device:
    """The device this process uses when the run asks for ``device``: under torchrun
    a CUDA run puts local rank ``i`` on ``cuda:i``."""
    w = world()
    if device.type != "cuda" or not w.distributed:
        return device
    count = torch.cuda.device_count()
    if w.local_rank >= count:
        raise ConfigError(
            f"local rank {w.local_rank} has no GPU: this node has {count}; start at most "
            f"{count} processes per node (torchrun --nproc_per_node={count}) or set device=cpu"
        )
    return torch.device("cuda", w.local_rank)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world().distributed:
        dist.barrier()


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An :class:`~osad.errors.OsadError` raised by ``fn`` is raised on every rank,
    so a refusal on rank 0 (an existing run directory, say) stops all processes
    instead of leaving the others waiting in the next collective. ``fn``'s result
    must be picklable.
    """
    w = world()
    if not w.distributed:
        return fn()
    box: list[object] = [None]
    failure: BaseException | None = None
    if w.is_main:
        try:
            box = [(True, fn())]
        except OsadError as exc:
            box = [(False, exc)]
        except BaseException as exc:
            failure = exc
            box = [(False, RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}"))]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    ok, value = box[0]  # type: ignore[misc]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def rank0_first(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, rank 0 first (it may download or create what the others
    then read); an :class:`~osad.errors.OsadError` on rank 0 stops every rank."""
    result: list[T] = []
    agree(lambda: result.append(fn()))
    return result[0] if result else fn()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all ranks, in place (unchanged without a process group)."""
    if world().distributed:
        dist.all_reduce(values)
    return values


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from ``keys`` (e.g. seed, rank, step) with NumPy's
    SeedSequence: distinct keys give statistically independent streams."""
    entropy = [int(k) % 2**64 for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1
