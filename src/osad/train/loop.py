"""The training loop: whole dataset on the device, batched augmentation.

Under torchrun every process runs this loop on the same seeded data order; each
step's global batch is shared out by :class:`~osad.train.parallel.DataParallelStep`
and only rank 0 logs and writes (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.config import Config
from osad.data import OpenSetData, random_crop_flip, to_float
from osad.distributed import (
    derive_seed,
    is_main,
    process_device,
    restore_batchnorm,
    sync_batchnorm,
    world,
)
from osad.errors import OsadError
from osad.eval.protocol import outputs_under_attack
from osad.models import create_model
from osad.perf import autocast, prepare_model
from osad.rundir import RunDir
from osad.runtime import resolve_device, seed_everything
from osad.train.methods import METHODS, model_spec
from osad.train.objectives import TrainObjective
from osad.train.parallel import DataParallelStep, check_split, usable_batch


class NonFiniteLossError(OsadError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def build_model_for(config: Config, data: OpenSetData) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model ``config`` trains on ``data``, with its registry recipe."""
    name, kwargs = model_spec(
        config, data.num_classes, data.channels, data.image_size, data.mean, data.std
    )
    return create_model(name, **kwargs), name, kwargs


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def check_finite(loss: float, where: str) -> None:
    """Stop training, naming ``where``, when ``loss`` is NaN or infinite."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"training stopped: non-finite loss at {where}")


def take_step(optimizer: torch.optim.Optimizer, loss: Tensor, where: str) -> None:
    """One optimiser step on ``loss``; a NaN or infinite loss stops training, naming ``where``."""
    check_finite(loss.item(), where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def validation_accuracy(
    model: nn.Module, config: Config, images: Tensor, labels: Tensor, attacked: bool
) -> float:
    """Accuracy on ``images``, clean or under the training attack (with their true labels,
    best point per sample, seeded per batch); shared out among processes under torchrun."""
    logits = outputs_under_attack(
        model,
        images,
        labels,
        config.train.attack if attacked else None,
        batch_size=config.eval.batch_size,
        seed=config.seed,
    ).logits
    return (logits.argmax(1) == labels).float().mean().item()


def train(
    config: Config,
    data: OpenSetData,
    run: RunDir | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the model of ``config.method`` on the known classes of ``data``.

    Each epoch ends with validation accuracy on clean images and under the
    training attack. With ``run`` given, per-epoch metrics go to
    ``history.jsonl`` and TensorBoard.
    """
    seed_everything(config.seed)
    device = process_device(resolve_device(config.device))
    t = config.train
    check_split(t.batch_size, t.grad_accumulation, world().size)
    model, name, kwargs = build_model_for(config, data)
    model.to(device)
    if t.sync_batchnorm and world().distributed:
        sync_batchnorm(model)
    prepare_model(model, config.perf, device)
    method = METHODS[config.method]
    objective = TrainObjective(
        t.attack if method.adversarial else None,
        t.reconstruction_weight,
        t.rotation_weight,
        fused_branches=t.fused_branches,
    )
    optimizer = _optimizer(config, model)
    step_fn = DataParallelStep(
        model, objective, t.grad_accumulation, lambda: autocast(config.perf, device)
    )
    data = data.to(device)
    order = torch.Generator().manual_seed(config.seed)
    # Each rank's augmentation stream restarts at every step from (seed, rank, step).
    augment = torch.Generator(device=device)
    rank = world().rank

    def load(indices: Tensor) -> tuple[Tensor, Tensor]:
        x = to_float(data.train_images[indices])
        if config.data.crop_padding or config.data.hflip:
            x = random_crop_flip(x, config.data.crop_padding, config.data.hflip, augment)
        return x, data.train_labels[indices]

    if not is_main():
        run, progress = None, False
    writer = None
    if run is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard))
    n = len(data.train_labels)
    batches = [(i, min(i + t.batch_size, n)) for i in range(0, n, t.batch_size)]
    # BatchNorm needs two images per micro-batch and process: a short last batch may not have them.
    batches = [(a, b) for a, b in batches if usable_batch(b - a, t.grad_accumulation)]
    result = TrainResult(model, name, kwargs)
    step = 0
    bar = tqdm(
        total=t.epochs * len(batches),
        desc=f"train {config.method}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for epoch in range(1, t.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=order).to(device)
            sums: dict[str, float] = {}
            seen = correct = 0
            for a, b in batches:
                augment.manual_seed(derive_seed(config.seed, rank, step))
                totals = step_fn.accumulate(perm[a:b], load)
                check_finite(totals.loss, f"epoch {epoch}, step {step + 1}")
                optimizer.step()
                step += 1
                seen += totals.count
                correct += totals.correct
                for key, value in totals.terms.items():
                    sums[key] = sums.get(key, 0.0) + value * totals.count
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{totals.loss:.3f}")
            model.eval()
            record = {"epoch": epoch, "step": step}
            record.update({f"train_{k}": v / seen for k, v in sums.items()})
            record["train_accuracy"] = correct / seen
            if len(data.val_labels):
                with autocast(config.perf, device):
                    for key, attacked in (("val_accuracy", False), ("val_attacked_accuracy", True)):
                        record[key] = validation_accuracy(
                            model, config, data.val_images, data.val_labels, attacked
                        )
            result.history.append(record)
            bar.set_postfix(
                epoch=epoch,
                loss=f"{record['train_loss']:.3f}",
                val=f"{record.get('val_accuracy', float('nan')):.3f}",
                val_adv=f"{record.get('val_attacked_accuracy', float('nan')):.3f}",
            )
            if run is not None:
                with run.history.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                for key, value in record.items():
                    if key not in ("epoch", "step"):
                        writer.add_scalar(key, value, epoch)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    restore_batchnorm(model)
    model.eval()
    return result
