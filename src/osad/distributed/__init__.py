"""Data-parallel training and sharded evaluation on PyTorch distributed.

Launched by ``torchrun``, every process (rank) runs the same program:

* :mod:`~osad.distributed.runtime`: the process group from torchrun's
  environment (``gloo`` for CPU tensors, ``nccl`` for CUDA tensors, one code
  path), this process's rank and device, rank-0-only work, derived seeds;
* :mod:`~osad.distributed.shards`: which batches a rank processes and how the
  per-sample results come back together in the single-process order;
* :mod:`~osad.distributed.batchnorm`: synchronised BatchNorm, also on CPU.

Without torchrun (or with one process) no process group exists and every
function here takes the single-process path. See docs/distributed.md.
"""

from osad.distributed.batchnorm import SyncBatchNorm, restore_batchnorm, sync_batchnorm
from osad.distributed.runtime import (
    World,
    agree,
    all_reduce_sum,
    barrier,
    derive_seed,
    init_from_env,
    is_main,
    process_device,
    rank0_first,
    shutdown,
    world,
)
from osad.distributed.shards import batch_slices, gather_rows, map_batches, rank_block

__all__ = [
    "SyncBatchNorm",
    "World",
    "agree",
    "all_reduce_sum",
    "barrier",
    "batch_slices",
    "derive_seed",
    "gather_rows",
    "init_from_env",
    "is_main",
    "map_batches",
    "process_device",
    "rank0_first",
    "rank_block",
    "restore_batchnorm",
    "shutdown",
    "sync_batchnorm",
    "world",
]
