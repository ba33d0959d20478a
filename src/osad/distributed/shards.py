"""Work split by whole batches, results gathered back in the single-process order.

A pass over ``n`` samples in batches of ``batch_size`` is cut into the same
global batches whatever the number of processes; rank ``r`` of ``R`` takes a
contiguous block of them (:func:`rank_block`), so concatenating the ranks'
results in rank order restores the batch order. Each batch keeps its global
index, from which callers derive anything random (an attack's random start),
so a sample's result does not depend on how many processes share the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from osad.distributed.runtime import world


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """The global batches ``[0, b), [b, 2b), ...`` of ``n`` samples."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def rank_block(count: int, rank: int, size: int) -> range:
    """The items of ``range(count)`` that ``rank`` of ``size`` takes: contiguous
    blocks in rank order whose lengths differ by at most one."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


Columns = Sequence[Tensor | None]


def gather_rows(columns: Columns | None, device: torch.device) -> list[Tensor | None]:
    """Each column concatenated along its first dimension over all ranks, in rank order.

    ``columns`` is this rank's list of tensors (``None`` for a column no rank
    produces, or ``None`` altogether for a rank without work); every rank gets
    the whole result. Tensors travel on their own device (NCCL for CUDA, Gloo
    for CPU) after one small exchange of shapes.
    """
    w = world()
    if not w.distributed:
        return list(columns or [])
    meta = None if columns is None else [_shape_of(c) for c in columns]
    metas: list[object] = [None] * w.size
    dist.all_gather_object(metas, meta)
    present = [m for m in metas if m is not None]
    if not present:
        return []
    gathered: list[Tensor | None] = []
    for j, column_meta in enumerate(present[0]):
        if column_meta is None:
            gathered.append(None)
            continue
        _, trailing, dtype = column_meta
        rows = [0 if m is None else m[j][0] for m in metas]
        local = columns[j] if columns is not None else None
        padded = torch.zeros((max(rows), *trailing), dtype=dtype, device=device)
        if local is not None:
            padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(w.size)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)]))
    return gathered


def _shape_of(t: Tensor | None) -> tuple[int, tuple[int, ...], torch.dtype] | None:
    return None if t is None else (t.shape[0], tuple(t.shape[1:]), t.dtype)


def map_batches(
    fn: Callable[[int, slice], Columns],
    n: int,
    batch_size: int,
    device: torch.device,
    *,
    desc: str = "",
    progress: bool = False,
) -> list[Tensor | None]:
    """``fn(index, batch)`` on this rank's global batches, its columns gathered.

    ``fn`` returns the same number of per-sample tensors (or ``None``s) for every
    batch; the result holds each column over all ``n`` samples, as one process
    running every batch in order would produce it. Progress shows on rank 0.
    """
    w = world()
    batches = batch_slices(n, batch_size)
    mine = rank_block(len(batches), w.rank, w.size)
    outputs = [
        fn(k, batches[k])
        for k in tqdm(
            mine, desc=desc, disable=not (progress and w.is_main), leave=False, dynamic_ncols=True
        )
    ]
    local = [_cat(parts) for parts in zip(*outputs, strict=True)] if outputs else None
    if not w.distributed:
        return local or []
    return gather_rows(local, device)


def _cat(parts: Sequence[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.cat(list(parts))
