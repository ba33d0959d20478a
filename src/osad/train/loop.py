"""The training loop: whole dataset on the device, batched augmentation, resumable.

With a run directory the loop writes checkpoints as ``config.checkpoint``
says, saves one and stops on SIGINT/SIGTERM, and continues from any checkpoint
exactly: on the same kind of device a resumed run ends with the same weights
and history as an uninterrupted one (see docs/reliability.md).

Under torchrun every process runs this loop on the same seeded data order; each
step's global batch is shared out by :class:`~osad.train.parallel.DataParallelStep`,
rank 0 alone logs and writes checkpoints, and a run resumes on any number of
processes (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.checkpoint import CheckpointStore
from osad.config import CheckpointConfig, Config, make_config, resolved_dict
from osad.data import OpenSetData, random_crop_flip, to_float
from osad.distributed import (
    all_reduce_sum,
    derive_seed,
    is_main,
    process_device,
    restore_batchnorm,
    sync_batchnorm,
    world,
)
from osad.errors import CheckpointError, ConfigError, InputError, OsadError, TrainingInterrupted
from osad.eval.protocol import outputs_under_attack
from osad.inputs import check_images, inputs_checked
from osad.models import check_fits, create_model
from osad.perf import autocast, prepare_model
from osad.rundir import RunDir
from osad.runtime import (
    StopRequest,
    deterministic_mode,
    resolve_device,
    seed_everything,
    stop_signals,
)
from osad.storage import storage_error, write_atomic
from osad.train.methods import METHODS, PEER_METHOD, model_spec
from osad.train.mutual import ApplyStep, MutualLearning
from osad.train.objectives import TrainObjective
from osad.train.parallel import DataParallelStep, StepTotals, check_split, usable_batch
from osad.train.state import Network, Schedule, TrainState, data_fingerprint


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
    name, kwargs = _spec_for(config, data, method)
    return create_model(name, **kwargs), name, kwargs


def _spec_for(
    config: Config, data: OpenSetData, method: str | None = None
) -> tuple[str, dict[str, Any]]:
    return model_spec(
        config, data.num_classes, data.channels, data.image_size, data.mean, data.std, method=method
    )


def check_training(config: Config, data: OpenSetData, device: torch.device) -> None:
    """Refuse what :func:`train` would refuse about ``config`` and ``data`` before it
    starts: images out of range, a batch too small to split, mutual learning where it
    cannot run, and a model whose float32 training state does not fit in ``device``'s
    memory (counted without allocating, :func:`osad.models.check_fits`). Callers run it
    before creating a run directory, so that a refusal leaves nothing behind."""
    for part in ("train_images", "val_images"):
        images = getattr(data, part)
        if images.dtype != torch.uint8 and len(images):
            check_images(images, name=f"data.{part}")
    t = config.train
    check_parallel_support(config)
    check_split(t.batch_size, t.grad_accumulation, world().size)
    m = config.model
    settings = f"model.arch={m.arch}, model.width={m.width}, model.latent_dim={m.latent_dim}"
    check_fits(*_spec_for(config, data), device, f"the configuration ({settings})")


def check_parallel_support(config: Config) -> None:
    """Refuse what the data-parallel step cannot do: mutual learning (osdn-caml) updates
    two networks in turn on the whole batch, in one process and without accumulation."""
    if not METHODS[config.method].peer:
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


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def _generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The loop's own random streams: the data order (seeded from ``seed``, the same in
    every process), and the augmentation and the step's rotations and attack starts,
    which :func:`_reseed` restarts at every step."""
    return {
        "order": torch.Generator().manual_seed(seed),
        "augment": torch.Generator(device=device),
        "step": torch.Generator(device=device),
    }


def _reseed(generators: dict[str, torch.Generator], seed: int, step: int) -> None:
    """Restart the per-step streams from ``(seed, rank, step)``: independent between
    processes, and the same after a resume on any number of processes."""
    rank = world().rank
    generators["augment"].manual_seed(derive_seed(seed, rank, step, 0))
    generators["step"].manual_seed(derive_seed(seed, rank, step, 1))


def check_finite(value: float, where: str) -> None:
    """Stop training, naming ``where``, when the loss ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training stopped: non-finite loss ({value}) at {where}")


def take_step(optimizer: torch.optim.Optimizer, loss: Tensor, where: str) -> float:
    """One optimiser step on ``loss``, returning its value; a NaN or infinite loss
    stops training, naming ``where``."""
    value = loss.item()
    check_finite(value, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


@contextlib.contextmanager
def _naming_last_good(checkpoints: _Checkpoints | None) -> Iterator[None]:
    """A non-finite loss raised inside also names the last good checkpoint."""
    try:
        yield
    except NonFiniteLossError as error:
        kept = checkpoints.last_good() if checkpoints else "no run directory"
        raise NonFiniteLossError(f"{error}; {kept}") from None


def _checked_step(
    where: str,
    checkpoints: _Checkpoints | None,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    network: str,
) -> None:
    """:func:`take_step` of one network of mutual learning; a non-finite loss also names
    the network and the last good checkpoint."""
    with _naming_last_good(checkpoints):
        take_step(optimizer, loss, f"{where}, {network} update")


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


class _Checkpoints:
    """Writes a run's checkpoints when ``config`` says, never with non-finite weights.

    Every process reads the checkpoint it resumes from; only rank 0 writes or deletes
    (the processes hold the same weights and optimizer state, and the random streams
    that differ between them restart from the step counter)."""

    def __init__(self, run: RunDir, config: CheckpointConfig, epochs: int) -> None:
        self.run, self.config, self.epochs = run, config, epochs
        self.store = CheckpointStore(run, config.keep)
        self.saved_step: int | None = None
        self.writes = is_main()

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
        if self.writes:
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
        path = self.store.save(state.step, state.files()) if self.writes else None
        self.saved_step = state.step
        return path or self.run.checkpoint(state.step)

    def last_good(self) -> str:
        latest = self.store.latest()
        if latest is None:
            return "no checkpoint was written before"
        return f"the last good checkpoint {latest} is kept"


class _EpochLog:
    """``history.jsonl`` and TensorBoard; on resume both restart from the checkpoint's history.

    A failed write (a full disk) of either raises a one-line
    :class:`~osad.errors.StorageError` naming the file. TensorBoard writes from a thread
    that would also print the error's traceback; that thread's failure is left to the
    next flush here, which re-raises it.
    """

    def __init__(self, run: RunDir | None, history: list[dict[str, float]], resumed: bool) -> None:
        self.run, self.writer = run, None
        if run is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        if resumed:
            write_atomic(run.history, "".join(json.dumps(r) + "\n" for r in history))
        self._excepthook = threading.excepthook
        threading.excepthook = self._quiet_writer_thread
        # Scalars are logged per epoch: drop any logged after the checkpoint.
        purge = len(history) + 1 if resumed else None
        try:
            with self._writing(run.tensorboard):
                self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge)
        except BaseException:
            threading.excepthook = self._excepthook
            raise

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        if not (
            isinstance(args.exc_value, OSError) and "AsyncWriter" in type(args.thread).__name__
        ):
            self._excepthook(args)

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise storage_error(path, exc) from None

    def add(self, record: dict[str, float]) -> None:
        if self.run is None:
            return
        with self._writing(self.run.history), self.run.history.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self._writing(self.run.tensorboard):
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.run is None:
            return
        try:
            if self.writer is not None:
                with self._writing(self.run.tensorboard):
                    self.writer.close()
        finally:
            threading.excepthook = self._excepthook


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
    device = process_device(resolve_device(config.device))
    check_training(config, data, device)
    with deterministic_mode(config.deterministic), inputs_checked():
        seed_everything(config.seed)
        t = config.train
        model, name, kwargs = build_model_for(config, data)
        model.to(device)
        if t.sync_batchnorm and world().distributed:
            sync_batchnorm(model)
        prepare_model(model, config.perf, device)
        generators = _generators(config.seed, device)
        method = METHODS[config.method]
        objective = TrainObjective(
            t.attack if method.adversarial else None,
            t.reconstruction_weight,
            t.rotation_weight,
            fused_branches=t.fused_branches,
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
            complete_config=lambda saved: resolved_dict(make_config(saved)),
            schedule=Schedule(t.epochs, len(data.train_labels), t.batch_size),
        )
        checkpoints = _Checkpoints(run, config.checkpoint, config.train.epochs) if run else None
        if checkpoints is not None and resume_from is not None:
            checkpoints.resume(state, resume_from)
        step = DataParallelStep(
            model, objective, t.grad_accumulation, lambda: autocast(config.perf, device)
        )
        data = data.to(device)
        with stop_signals(enabled=run is not None) as stop:
            log = _EpochLog(run if is_main() else None, state.history, resume_from is not None)
            try:
                _epochs(config, data, state, step, checkpoints, stop, log, progress and is_main())
            finally:
                log.close()
    restore_batchnorm(model)
    model.eval()
    result = TrainResult(model, name, kwargs, state.history)
    if peer is not None:
        result.peer = TrainResult(peer.model.eval(), *peer.recipe)
    return result


def _epochs(
    config: Config,
    data: OpenSetData,
    state: TrainState,
    step: DataParallelStep,
    checkpoints: _Checkpoints | None,
    stop: StopRequest,
    log: _EpochLog,
    progress: bool,
) -> None:
    t, model, optimizer = config.train, state.model, state.optimizer
    generators, device = state.generators, data.train_labels.device
    mutual = None
    if state.peer is not None:
        peer = state.peer
        mutual = MutualLearning(peer.model, peer.optimizer, t.mutual_weight, t.mutual_temperature)
    n = len(data.train_labels)
    batches = [(i, min(i + t.batch_size, n)) for i in range(0, n, t.batch_size)]
    # BatchNorm needs two images per micro-batch and process: a short last batch may not have them.
    batches = [(a, b) for a, b in batches if usable_batch(b - a, t.grad_accumulation)]

    def load(indices: Tensor) -> tuple[Tensor, Tensor]:
        x = to_float(data.train_images[indices])
        if config.data.crop_padding or config.data.hflip:
            x = random_crop_flip(
                x, config.data.crop_padding, config.data.hflip, generators["augment"]
            )
        return x, data.train_labels[indices]

    def asked() -> bool:
        return stop.signum is not None

    def stop_here(requested: bool) -> None:
        # ``requested`` is agreed by all processes, so all stop at the same step.
        if requested and checkpoints is not None:
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
                _reseed(generators, config.seed, state.step)
                where = (
                    f"epoch {state.epoch}, step {state.step + 1} "
                    f"(batch {state.batch + 1} of {len(batches)})"
                )
                indices = state.permutation[a:b]
                if mutual is None:
                    totals = step.accumulate(indices, load, stop=asked)
                    with _naming_last_good(checkpoints):
                        check_finite(totals.loss, where)
                    optimizer.step()
                else:
                    apply = partial(_checked_step, where, checkpoints)
                    totals = _mutual_step(mutual, step, optimizer, indices, load, apply, asked)
                state.finish_step(totals.terms, totals.count, totals.correct)
                if checkpoints and checkpoints.step_due(state, state.batch == len(batches)):
                    checkpoints.save(state)
                bar.update(1)
                bar.set_postfix(epoch=state.epoch, loss=f"{totals.loss:.3f}")
                stop_here(totals.stop)
            model.eval()
            if mutual is not None:
                mutual.peer.eval()
            record: dict[str, float] = {"epoch": state.epoch, "step": state.step}
            record.update(state.meter.means())
            if len(data.val_labels):
                with autocast(config.perf, device):
                    for key, attacked in (("val_accuracy", False), ("val_attacked_accuracy", True)):
                        record[key] = validation_accuracy(
                            model, config, data.val_images, data.val_labels, attacked
                        )
                    if mutual is not None:
                        record["val_peer_accuracy"] = validation_accuracy(
                            mutual.peer, config, data.val_images, data.val_labels, False
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
                flag = torch.tensor([float(stop.signum is not None)], device=device)
                stop_here(all_reduce_sum(flag).item() > 0)
    finally:
        bar.close()


def _mutual_step(
    mutual: MutualLearning,
    step: DataParallelStep,
    optimizer: torch.optim.Optimizer,
    indices: Tensor,
    load: Callable[[Tensor], tuple[Tensor, Tensor]],
    apply: ApplyStep,
    stop: Callable[[], bool],
) -> StepTotals:
    """One osdn-caml step (OSDN's update, then the peer's, src/osad/train/mutual.py) on
    the whole batch in this process: mutual learning has no data-parallel step, and
    :func:`osad.workflow.train_run` refuses it under torchrun with several processes."""
    x, y = load(indices)
    with step.autocast():
        out = mutual.step(step.model, optimizer, step.objective, x, y, apply)
    terms = {"loss": out.loss.item(), **{k: v.item() for k, v in out.terms.items()}}
    return StepTotals(terms, int((out.logits.argmax(1) == y).sum().item()), len(y), stop())
