"""The training loop: whole dataset on the device, batched augmentation, resumable.

With a run directory the loop writes checkpoints as ``config.checkpoint``
says, saves one and stops on SIGINT/SIGTERM, and continues from any checkpoint
exactly: on the same kind of device a resumed run ends with the same weights
and history as an uninterrupted one (see docs/reliability.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.attacks import build_attack
from osad.checkpoint import CheckpointStore
from osad.config import CheckpointConfig, Config, resolved_dict
from osad.data import OpenSetData, random_crop_flip, to_float
from osad.errors import CheckpointError, InputError, OsadError, TrainingInterrupted
from osad.inputs import check_images, inputs_checked
from osad.models import create_model
from osad.perf import autocast, prepare_model
from osad.rundir import RunDir
from osad.runtime import (
    StopRequest,
    deterministic_mode,
    resolve_device,
    seed_everything,
    stop_signals,
)
from osad.storage import write_atomic
from osad.train.methods import METHODS, PEER_METHOD, model_spec
from osad.train.mutual import MutualLearning
from osad.train.objectives import TrainObjective
from osad.train.state import Network, TrainState, data_fingerprint


class NonFiniteLossError(OsadError):
    """Training produced a NaN or infinite loss (or weights)."""


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


def _generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The loop's own random streams, seeded from ``seed``: data order, augmentation,
    the step's rotations and attack starts, and the validation attack (reseeded each epoch)."""
    return {
        "order": torch.Generator().manual_seed(seed),
        "augment": torch.Generator(device=device).manual_seed(seed + 1),
        "step": torch.Generator(device=device).manual_seed(seed + 2),
        "validation": torch.Generator(device=device),
    }


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


def take_step(optimizer: torch.optim.Optimizer, loss: Tensor, where: str) -> float:
    """One optimiser step on ``loss``, returning its value; a NaN or infinite loss
    stops training, naming ``where``."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training stopped: non-finite loss ({value}) at {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def _checked_step(
    where: str,
    checkpoints: _Checkpoints | None,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    network: str = "",
) -> float:
    """:func:`take_step`; a non-finite loss also names the network and the last good checkpoint."""
    try:
        return take_step(optimizer, loss, f"{where}, {network} update" if network else where)
    except NonFiniteLossError as error:
        kept = checkpoints.last_good() if checkpoints else "no run directory"
        raise NonFiniteLossError(f"{error}; {kept}") from None


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


class _Checkpoints:
    """Writes a run's checkpoints when ``config`` says, never with non-finite weights."""

    def __init__(self, run: RunDir, config: CheckpointConfig, epochs: int) -> None:
        self.run, self.config, self.epochs = run, config, epochs
        self.store = CheckpointStore(run, config.keep)
        self.saved_step: int | None = None

    def resume(self, state: TrainState, checkpoint: Path) -> None:
        try:
            state.restore(self.store.read(checkpoint), f"checkpoint {checkpoint}")
        except CheckpointError as exc:
            step = RunDir.checkpoint_step(checkpoint)
            earlier = [s for s in self.store.steps() if step is not None and s < step]
            if not earlier:
                raise
            raise CheckpointError(
                f"{exc}; an earlier checkpoint may be intact: "
                f"osad train --resume {self.run.checkpoint(earlier[-1])}"
            ) from None
        self.store.discard_after(state.step)
        self.saved_step = state.step

    def epoch_due(self, epoch: int) -> bool:
        every = self.config.every_epochs
        return every > 0 and (epoch % every == 0 or epoch == self.epochs)

    def step_due(self, state: TrainState, epoch_done: bool) -> bool:
        # At an epoch's last batch the epoch-end checkpoint (after validation) replaces it.
        if epoch_done and self.epoch_due(state.epoch):
            return False
        every = self.config.every_steps
        return every > 0 and state.step % every == 0

    def save(self, state: TrainState) -> Path:
        if self.saved_step == state.step:
            return self.run.checkpoint(state.step)
        if not state.weights_finite():
            raise NonFiniteLossError(
                f"training stopped: non-finite weights at epoch {state.epoch}, step {state.step}; "
                f"not saved, {self.last_good()}"
            )
        path = self.store.save(state.step, state.files())
        self.saved_step = state.step
        return path

    def last_good(self) -> str:
        latest = self.store.latest()
        if latest is None:
            return "no checkpoint was written before"
        return f"the last good checkpoint {latest} is kept"


class _EpochLog:
    """``history.jsonl`` and TensorBoard; on resume both restart from the checkpoint's history."""

    def __init__(self, run: RunDir | None, history: list[dict[str, float]], resumed: bool) -> None:
        self.run, self.writer = run, None
        if run is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        if resumed:
            write_atomic(run.history, "".join(json.dumps(r) + "\n" for r in history))
        # Scalars are logged per epoch: drop any logged after the checkpoint.
        purge = len(history) + 1 if resumed else None
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge)

    def add(self, record: dict[str, float]) -> None:
        if self.run is None:
            return
        with self.run.history.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _interrupted(
    stop: StopRequest, state: TrainState, path: Path, run: RunDir
) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"interrupted by {stop.name} at epoch {state.epoch}, step {state.step}; checkpoint "
        f"saved to {path}; resume with: osad train --resume {run.root}",
        stop.signum or 0,
    )


def train(
    config: Config,
    data: OpenSetData,
    run: RunDir | None = None,
    progress: bool = True,
    *,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train the model of ``config.method`` on the known classes of ``data``.

    Each epoch ends with validation accuracy on clean images and under the
    training attack. With ``run`` given, per-epoch metrics go to
    ``history.jsonl`` and TensorBoard, checkpoints to ``run.checkpoints``, and
    SIGINT/SIGTERM save a checkpoint and raise :class:`TrainingInterrupted`;
    ``resume_from`` (a checkpoint of ``run``) continues from it.
    """
    if resume_from is not None and run is None:
        raise InputError("resume_from needs the run directory it belongs to (run=...)")
    for part in ("train_images", "val_images"):
        images = getattr(data, part)
        if images.dtype != torch.uint8 and len(images):
            check_images(images, name=f"data.{part}")
    with deterministic_mode(config.deterministic), inputs_checked():
        seed_everything(config.seed)
        device = resolve_device(config.device)
        model, name, kwargs = build_model_for(config, data)
        prepare_model(model.to(device), config.perf, device)
        generators = _generators(config.seed, device)
        method = METHODS[config.method]
        objective = TrainObjective(
            config.train.attack if method.adversarial else None,
            config.train.reconstruction_weight,
            config.train.rotation_weight,
            fused_branches=config.train.fused_branches,
            generator=generators["step"],
        )
        context = {}
        if run is not None:
            context = {"config": resolved_dict(config), "data": data_fingerprint(data)}
            context["device"] = device.type
        peer = None
        if method.peer:
            peer_model, peer_name, peer_kwargs = build_model_for(config, data, PEER_METHOD)
            prepare_model(peer_model.to(device), config.perf, device)
            peer = Network(peer_model, _optimizer(config, peer_model), (peer_name, peer_kwargs))
        state = TrainState(
            model,
            _optimizer(config, model),
            generators,
            recipe=(name, kwargs),
            context=context,
            peer=peer,
        )
        checkpoints = _Checkpoints(run, config.checkpoint, config.train.epochs) if run else None
        if checkpoints is not None and resume_from is not None:
            checkpoints.resume(state, resume_from)
        data = data.to(device)
        with stop_signals(enabled=run is not None) as stop:
            log = _EpochLog(run, state.history, resumed=resume_from is not None)
            try:
                _epochs(config, data, state, objective, checkpoints, stop, log, progress)
            finally:
                log.close()
    model.eval()
    result = TrainResult(model, name, kwargs, state.history)
    if peer is not None:
        result.peer = TrainResult(peer.model.eval(), *peer.recipe)
    return result


def _epochs(
    config: Config,
    data: OpenSetData,
    state: TrainState,
    objective: TrainObjective,
    checkpoints: _Checkpoints | None,
    stop: StopRequest,
    log: _EpochLog,
    progress: bool,
) -> None:
    t, model, optimizer = config.train, state.model, state.optimizer
    generators, device = state.generators, data.train_labels.device
    val_attack = build_attack(model, t.attack, generator=generators["validation"])
    mutual = None
    if state.peer is not None:
        peer = state.peer
        mutual = MutualLearning(peer.model, peer.optimizer, t.mutual_weight, t.mutual_temperature)
    n = len(data.train_labels)
    batches = [(i, min(i + t.batch_size, n)) for i in range(0, n, t.batch_size)]
    # A final batch of one image cannot be batch-normalised in training mode.
    batches = [(a, b) for a, b in batches if b - a > 1]

    def stop_here() -> None:
        if stop.signum is not None and checkpoints is not None:
            raise _interrupted(stop, state, checkpoints.save(state), checkpoints.run)

    bar = tqdm(
        total=t.epochs * len(batches),
        initial=state.step,
        desc=f"train {config.method}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        while state.epoch <= t.epochs:
            if state.permutation is None:
                state.permutation = torch.randperm(n, generator=generators["order"]).to(
                    data.train_labels.device
                )
            model.train()
            if mutual is not None:
                mutual.peer.train()
            for a, b in batches[state.batch :]:
                idx = state.permutation[a:b]
                x = to_float(data.train_images[idx])
                y = data.train_labels[idx]
                if config.data.crop_padding or config.data.hflip:
                    x = random_crop_flip(
                        x, config.data.crop_padding, config.data.hflip, generators["augment"]
                    )
                where = (
                    f"epoch {state.epoch}, step {state.step + 1} "
                    f"(batch {state.batch + 1} of {len(batches)})"
                )
                apply = partial(_checked_step, where, checkpoints)
                if mutual is None:
                    with autocast(config.perf, device):
                        out = objective(model, x, y)
                    apply(optimizer, out.loss)
                else:
                    # OSDN's step, then the peer's (src/osad/train/mutual.py).
                    with autocast(config.perf, device):
                        out = mutual.step(model, optimizer, objective, x, y, apply)
                loss = out.loss.item()
                terms = {"loss": loss, **{k: v.item() for k, v in out.terms.items()}}
                state.finish_step(terms, b - a, (out.logits.argmax(1) == y).sum().item())
                if checkpoints and checkpoints.step_due(state, state.batch == len(batches)):
                    checkpoints.save(state)
                bar.update(1)
                bar.set_postfix(epoch=state.epoch, loss=f"{loss:.3f}")
                stop_here()
            model.eval()
            if mutual is not None:
                mutual.peer.eval()
            record: dict[str, float] = {"epoch": state.epoch, "step": state.step}
            record.update(state.meter.means())
            if len(data.val_labels):
                generators["validation"].manual_seed(config.seed)
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
            epoch = state.epoch
            state.finish_epoch(record)
            log.add(record)
            bar.set_postfix(
                epoch=epoch,
                loss=f"{record['train_loss']:.3f}",
                val=f"{record.get('val_accuracy', float('nan')):.3f}",
                val_adv=f"{record.get('val_attacked_accuracy', float('nan')):.3f}",
            )
            if checkpoints and checkpoints.epoch_due(epoch):
                checkpoints.save(state)
            if state.epoch <= t.epochs:
                stop_here()
    finally:
        bar.close()
