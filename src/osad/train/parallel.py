"""One optimiser step on a global batch, shared out among ranks and micro-batches.

With ``R`` processes (torchrun) and ``k`` accumulation steps, a global batch of
``B`` images is cut into ``R`` contiguous rank shards and each shard into ``k``
micro-batches. Every micro-batch is attacked and its loss back-propagated before
the next one is loaded, so memory holds ``B / (R k)`` images at a time. The
gradient is that of the global batch's mean loss::

    grad = sum_{r, m} (b_rm / B) grad L_rm

with ``L_rm`` the mean loss of rank ``r``'s micro-batch ``m`` of ``b_rm`` images:
each micro-batch's loss is weighted by ``R b_rm / B`` before its backward pass,
and DistributedDataParallel (DDP, Li et al., VLDB 2020,
https://arxiv.org/abs/2006.15704) averages the ranks' gradients. Gradients are
all-reduced once per step: micro-batches before the last run under DDP's
``no_sync``.

DDP wraps the whole step objective (attack and loss), whose forward pass starts
with DDP's one broadcast of rank 0's BatchNorm buffers, so every rank attacks the
same model. Inside it the attacks call the model itself, not DDP's forward, in
eval mode (:func:`osad.attacks.attack_mode`): their many forward and backward
passes trigger no further broadcast, and their backward passes ask autograd for
input gradients only, so DDP's gradient hooks never fire for them. Gradients
are all-reduced only in the backward pass of the training loss.

BatchNorm in training mode normalises with the statistics of what one forward
pass sees: the micro-batch of one rank, unless the model's BatchNorm layers are
:class:`osad.distributed.SyncBatchNorm` (``train.sync_batchnorm``), which makes
them the statistics of all ranks' micro-batches. So a step equals the
single-process step on the same global batch (up to floating-point rounding)
when ``k = 1`` and BatchNorm is synchronised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from osad.config import Config
from osad.distributed import all_reduce_sum, rank_block, world
from osad.errors import ConfigError
from osad.methods import METHODS
from osad.models import OpenSetNet
from osad.train.objectives import TrainObjective


class _StepModule(nn.Module):
    """A step's objective as a module's forward pass: DDP reduces the gradients of
    backward passes through its own forward only."""

    def __init__(self, model: OpenSetNet, objective: TrainObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        out = self.objective(self.model, x, y)
        return out.loss, out.terms, out.logits


@dataclass
class StepTotals:
    """A step's loss terms (means over the global batch) and correct predictions, and
    whether any rank asked to stop (every rank must stop at the same step)."""

    terms: dict[str, float]
    correct: int
    count: int
    stop: bool = False

    @property
    def loss(self) -> float:
        return self.terms["loss"]


def check_split(batch_size: int, accumulation: int, ranks: int) -> None:
    """Refuse a global batch too small to give every micro-batch of every rank two images
    (BatchNorm needs two values per channel in training mode)."""
    if batch_size < 2 * accumulation * ranks:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch: it cannot give each of "
            f"{ranks} process(es) x {accumulation} accumulation step(s) 2 images; use "
            f"train.batch_size>={2 * accumulation * ranks} or fewer processes or steps"
        )


def check_parallel_support(config: Config) -> None:
    """Refuse what the data-parallel step cannot do: a method with several networks
    (osdn-caml's mutual learning) updates them in turn on the whole batch
    (:mod:`osad.train.turns`), in one process and without accumulation."""
    if len(METHODS[config.method].networks) == 1:
        return
    if world().distributed:
        raise ConfigError(
            f"method {config.method} (mutual learning) trains in one process only; run it "
            f"without torchrun or with --nproc_per_node=1 (docs/distributed.md)"
        )
    if config.train.grad_accumulation != 1:
        raise ConfigError(
            f"method {config.method} (mutual learning) steps on the whole batch; set "
            f"train.grad_accumulation=1, got {config.train.grad_accumulation}"
        )


def micro_batches(count: int, accumulation: int) -> list[slice]:
    """This rank's micro-batches of a global batch of ``count`` images (positions in it)."""
    w = world()
    shard = rank_block(count, w.rank, w.size)
    pieces = [rank_block(len(shard), m, accumulation) for m in range(accumulation)]
    return [slice(shard.start + p.start, shard.start + p.stop) for p in pieces if len(p)]


def usable_batch(count: int, accumulation: int) -> bool:
    """Whether a global batch of ``count`` images gives every micro-batch of every
    rank two images (the epoch's last batch may not)."""
    return count >= 2 * accumulation * world().size


class DataParallelStep:
    """Gradients of a global batch's loss, over all ranks and micro-batches.

    ``model`` must already be on this process's device (with
    :func:`osad.distributed.sync_batchnorm` applied if wanted); under a process
    group it is wrapped in DDP, which broadcasts rank 0's weights and buffers.
    """

    def __init__(
        self,
        model: OpenSetNet,
        objective: TrainObjective,
        accumulation: int = 1,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.model, self.objective = model, objective
        self.accumulation = accumulation
        self.autocast = autocast
        self.step_module: nn.Module = _StepModule(model, objective)
        self.ddp: DistributedDataParallel | None = None
        if world().distributed:
            device = next(model.parameters()).device
            self.ddp = DistributedDataParallel(
                self.step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
            )
            self.step_module = self.ddp

    def accumulate(
        self,
        indices: Tensor,
        load: Callable[[Tensor], tuple[Tensor, Tensor]],
        stop: Callable[[], bool] = lambda: False,
    ) -> StepTotals:
        """Zero the gradients and accumulate those of the global batch ``indices``;
        ``load(indices)`` returns the (augmented) images and labels of a micro-batch.
        ``stop()``, asked after the backward passes: whether this rank was asked to stop
        (a signal, possibly during this step); the totals say whether any rank was.
        The caller checks the returned loss and takes the optimiser step."""
        for p in self.model.parameters():
            p.grad = None
        global_count = len(indices)
        pieces = micro_batches(global_count, self.accumulation)
        sums: Tensor | None = None
        names: list[str] = []
        for i, piece in enumerate(pieces):
            x, y = load(indices[piece])
            last = i == len(pieces) - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else None
            with no_sync or contextlib.nullcontext():
                with self.autocast():
                    loss, terms, logits = self.step_module(x, y)
                weight = world().size * len(y) / global_count
                (loss * weight).backward()
            values = {"loss": loss, **terms}
            names = list(values)
            local = torch.stack([v.detach().float() * len(y) for v in values.values()])
            correct = (logits.argmax(1) == y).sum().float()
            local = torch.cat([local, correct[None]])
            sums = local if sums is None else sums + local
        assert sums is not None, "every rank has a micro-batch (see check_split)"
        # One all-reduce carries the metrics and the stop requests of all ranks.
        flag = torch.tensor([float(stop())], device=sums.device)
        totals = all_reduce_sum(torch.cat([sums, flag]).double()).tolist()
        return StepTotals(
            {k: v / global_count for k, v in zip(names, totals, strict=False)},
            round(totals[-2]),
            global_count,
            stop=totals[-1] > 0,
        )
