"""Run a function in several local processes joined by a Gloo process group."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch
import torch.multiprocessing as mp

from osad.distributed import init_from_env, shutdown


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for one of ``size`` local processes."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(size),
    }


def _entry(rank: int, size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(torchrun_env(rank, size, port))
    torch.set_num_threads(1)
    init_from_env()
    try:
        fn(rank, *args)
    finally:
        shutdown()


def run_ranks(fn: Callable, size: int, *args) -> None:
    """``fn(rank, *args)`` in ``size`` processes; an exception in any fails the caller."""
    mp.spawn(_entry, args=(size, free_port(), fn, args), nprocs=size)
