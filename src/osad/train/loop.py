"""The training loop: whole dataset on the device, batched augmentation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.attacks import build_attack
from osad.config import Config
from osad.data import OpenSetData, random_crop_flip, to_float
from osad.errors import OsadError
from osad.models import create_model
from osad.perf import autocast, prepare_model
from osad.rundir import RunDir
from osad.runtime import resolve_device, seed_everything
from osad.train.methods import METHODS, PEER_METHOD, model_spec
from osad.train.mutual import MutualLearning
from osad.train.objectives import TrainObjective


class NonFiniteLossError(OsadError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    # The peer network of mutual learning (osdn-caml), with its own recipe.
    peer: TrainResult | None = None


def build_model_for(
    config: Config, data: OpenSetData, method: str | None = None
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model ``config`` trains on ``data`` (with ``method``'s parts if given), with
    its registry recipe."""
    name, kwargs = model_spec(
        config,
        data.num_classes,
        data.channels,
        data.image_size,
        data.mean,
        data.std,
        method=method,
    )
    return create_model(name, **kwargs), name, kwargs


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


@torch.no_grad()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += (
            (model(to_float(images[i : i + batch_size])).argmax(1) == labels[i : i + batch_size])
            .sum()
            .item()
        )
    return correct / max(len(labels), 1)


def take_step(optimizer: torch.optim.Optimizer, loss: Tensor, where: str) -> None:
    """One optimiser step on ``loss``; a NaN or infinite loss stops training, naming ``where``."""
    if not math.isfinite(loss.item()):
        raise NonFiniteLossError(f"training stopped: non-finite loss at {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def robust_accuracy(
    model: nn.Module, attack, images: Tensor, labels: Tensor, batch_size: int
) -> float:
    """Accuracy on images attacked with their true labels."""
    correct = 0
    for i in range(0, len(labels), batch_size):
        x, y = to_float(images[i : i + batch_size]), labels[i : i + batch_size]
        with torch.no_grad():
            correct += (model(attack(x, y)).argmax(1) == y).sum().item()
    return correct / max(len(labels), 1)


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
    device = resolve_device(config.device)
    model, name, kwargs = build_model_for(config, data)
    prepare_model(model.to(device), config.perf, device)
    method = METHODS[config.method]
    objective = TrainObjective(
        config.train.attack if method.adversarial else None,
        config.train.reconstruction_weight,
        config.train.rotation_weight,
        fused_branches=config.train.fused_branches,
    )
    optimizer = _optimizer(config, model)
    mutual = None
    if method.peer:
        peer, peer_name, peer_kwargs = build_model_for(config, data, PEER_METHOD)
        prepare_model(peer.to(device), config.perf, device)
        mutual = MutualLearning(
            peer,
            _optimizer(config, peer),
            config.train.mutual_weight,
            config.train.mutual_temperature,
        )
    data = data.to(device)
    order = torch.Generator().manual_seed(config.seed)
    augment = torch.Generator(device=device).manual_seed(config.seed + 1)
    val_attack = build_attack(model, config.train.attack, generator=torch.Generator(device=device))

    writer = None
    if run is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard))
    t = config.train
    n = len(data.train_labels)
    batches = [(i, min(i + t.batch_size, n)) for i in range(0, n, t.batch_size)]
    # A final batch of one image cannot be batch-normalised in training mode.
    batches = [(a, b) for a, b in batches if b - a > 1]
    result = TrainResult(model, name, kwargs)
    if mutual is not None:
        result.peer = TrainResult(mutual.peer, peer_name, peer_kwargs)
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
            if mutual is not None:
                mutual.peer.train()
            perm = torch.randperm(n, generator=order).to(device)
            sums: dict[str, float] = {}
            seen = correct = 0
            for a, b in batches:
                idx = perm[a:b]
                x = to_float(data.train_images[idx])
                y = data.train_labels[idx]
                if config.data.crop_padding or config.data.hflip:
                    x = random_crop_flip(x, config.data.crop_padding, config.data.hflip, augment)
                where = f"epoch {epoch}, step {step + 1}"
                if mutual is not None:
                    with autocast(config.perf, device):
                        out = mutual.step(
                            model,
                            optimizer,
                            objective,
                            x,
                            y,
                            lambda opt, loss, which, at=where: take_step(
                                opt, loss, f"{at} ({which})"
                            ),
                        )
                else:
                    with autocast(config.perf, device):
                        out = objective(model, x, y)
                    take_step(optimizer, out.loss, where)
                step += 1
                bs = b - a
                seen += bs
                correct += (out.logits.argmax(1) == y).sum().item()
                for key, value in {"loss": out.loss, **out.terms}.items():
                    sums[key] = sums.get(key, 0.0) + value.item() * bs
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{out.loss.item():.3f}")
            model.eval()
            if mutual is not None:
                mutual.peer.eval()
            record = {"epoch": epoch, "step": step}
            record.update({f"train_{k}": v / seen for k, v in sums.items()})
            record["train_accuracy"] = correct / seen
            if len(data.val_labels):
                val_attack.generator.manual_seed(config.seed)
                with autocast(config.perf, device):
                    record["val_accuracy"] = _accuracy(
                        model, data.val_images, data.val_labels, config.eval.batch_size
                    )
                    record["val_attacked_accuracy"] = robust_accuracy(
                        model, val_attack, data.val_images, data.val_labels, config.eval.batch_size
                    )
                    if mutual is not None:
                        record["val_peer_accuracy"] = _accuracy(
                            mutual.peer, data.val_images, data.val_labels, config.eval.batch_size
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
    model.eval()
    if mutual is not None:
        mutual.peer.eval()
    return result
