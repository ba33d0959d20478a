"""The training loop: whole dataset on the device, batched augmentation, resumable.

With a run directory the loop writes checkpoints as ``config.checkpoint``
says (:mod:`osad.train.checkpoints`), saves one and stops on SIGINT/SIGTERM,
and continues from any checkpoint exactly: on the same kind of device a resumed
run ends with the same weights and history as an uninterrupted one (see
docs/reliability.md).

Under torchrun every process runs this loop on the same seeded data order; each
step's global batch is shared out by :class:`~osad.train.parallel.DataParallelStep`,
rank 0 alone logs and writes checkpoints, and a run resumes on any number of
processes (docs/distributed.md). A method with several networks updates them in
turn in one process (:mod:`osad.train.turns`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from osad.attacks.outputs import outputs_under_attack
from osad.config import Config, make_config, resolved_dict
from osad.data import OpenSetData, random_crop_flip, to_float
from osad.distributed import (
    all_reduce_sum,
    derive_seed,
    is_main,
    process_device,
    restore_batchnorm,
    world,
)
from osad.errors import InputError
from osad.inputs import inputs_checked
from osad.perf import autocast
from osad.rundir import MAIN, RunDir
from osad.runlog import RunLog
from osad.runtime import (
    StopRequest,
    deterministic_mode,
    resolve_device,
    seed_everything,
    stop_signals,
)
from osad.train.checkpoints import CheckpointPolicy, naming_last_good
from osad.train.factory import build_networks, check_training
from osad.train.objectives import TrainObjective
from osad.train.parallel import DataParallelStep, StepTotals, usable_batch
from osad.train.state import Schedule, TrainState, data_fingerprint
from osad.train.step import TrainResult, check_finite, take_step
from osad.train.turns import NetworksInTurn, term_key

Load = Callable[[Tensor], tuple[Tensor, Tensor]]


def train(
    config: Config,
    data: OpenSetData,
    run: RunDir | None = None,
    progress: bool = True,
    *,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train the networks of ``config.method`` on the known classes of ``data``.

    Each epoch ends with validation accuracy on clean images and under the
    training attack. With ``run`` given, per-epoch metrics go to
    ``history.jsonl`` and TensorBoard, checkpoints to ``run.checkpoints``, and
    SIGINT/SIGTERM save a checkpoint and raise :class:`TrainingInterrupted`;
    ``resume_from`` (a checkpoint of ``run``) continues from it. Returns the run's
    model (``main``) with the other networks in :attr:`TrainResult.others`.
    """
    if resume_from is not None and run is None:
        raise InputError("resume_from needs the run directory it belongs to (run=...)")
    device = process_device(resolve_device(config.device))
    check_training(config, data, device)
    t = config.train
    with deterministic_mode(config.deterministic), inputs_checked():
        seed_everything(config.seed)
        networks = build_networks(config, data, device)
        generators = _generators(config.seed, device)
        objectives = {
            name: TrainObjective.for_network(config, name, generator=generators["step"])
            for name in networks
        }
        context = {}
        if run is not None:
            context = {"config": resolved_dict(config), "data": data_fingerprint(data)}
            context["device"] = device.type
        state = TrainState(
            networks,
            generators,
            context=context,
            complete_config=lambda saved: resolved_dict(make_config(saved)),
            schedule=Schedule(t.epochs, len(data.train_labels), t.batch_size),
        )
        checkpoints = None
        if run is not None:
            checkpoints = CheckpointPolicy(run, config.checkpoint, t.epochs, writes=is_main())
        if checkpoints is not None and resume_from is not None:
            checkpoints.resume(state, resume_from)
        step = _Step(state, objectives, t.grad_accumulation, lambda: autocast(config.perf, device))
        data = data.to(device)
        with stop_signals(enabled=run is not None) as stop:
            log = RunLog(run if is_main() else None, state.history, resumed=resume_from is not None)
            try:
                _epochs(config, data, state, step, checkpoints, stop, log, progress and is_main())
            finally:
                log.close()
    results = {}
    for name, network in networks.items():
        restore_batchnorm(network.model)
        results[name] = TrainResult(network.model.eval(), *network.recipe)
    result = results.pop(MAIN)
    result.history, result.others = state.history, results
    return result


def _epochs(
    config: Config,
    data: OpenSetData,
    state: TrainState,
    step: _Step,
    checkpoints: CheckpointPolicy | None,
    stop: StopRequest,
    log: RunLog,
    progress: bool,
) -> None:
    t, generators, device = config.train, state.generators, data.train_labels.device
    n = len(data.train_labels)
    batches = [(i, min(i + t.batch_size, n)) for i in range(0, n, t.batch_size)]
    # BatchNorm needs two images per micro-batch and process: a short last batch may not have them.
    batches = [(a, b) for a, b in batches if usable_batch(b - a, t.grad_accumulation)]
    load = partial(_load, config, data, generators["augment"])
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
                state.permutation = torch.randperm(n, generator=generators["order"]).to(device)
            for network in state.networks.values():
                network.model.train()
            for a, b in batches[state.batch :]:
                _reseed(generators, config.seed, state.step)
                where = (
                    f"epoch {state.epoch}, step {state.step + 1} "
                    f"(batch {state.batch + 1} of {len(batches)})"
                )
                with naming_last_good(checkpoints):
                    totals = step(
                        state.permutation[a:b], load, where, lambda: stop.signum is not None
                    )
                state.finish_step(totals.terms, totals.count, totals.correct)
                if checkpoints and checkpoints.step_due(state, state.batch == len(batches)):
                    checkpoints.save(state)
                bar.update(1)
                bar.set_postfix(epoch=state.epoch, loss=f"{totals.loss:.3f}")
                # ``totals.stop`` is agreed by all processes, so all stop at the same step.
                if totals.stop and checkpoints is not None:
                    raise checkpoints.interrupted(stop, state)
            for network in state.networks.values():
                network.model.eval()
            record: dict[str, float] = {"epoch": state.epoch, "step": state.step}
            record.update(state.meter.means())
            record.update(_validation(config, data, state))
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
                if all_reduce_sum(flag).item() > 0 and checkpoints is not None:
                    raise checkpoints.interrupted(stop, state)
    finally:
        bar.close()


class _Step:
    """One optimisation step of the run's networks on the global batch ``indices``.

    One network: its gradients over all processes and micro-batches
    (:class:`DataParallelStep`), then its optimiser step. Several: each updated in
    turn on the whole batch in this process (:class:`NetworksInTurn`; torchrun with
    several processes and accumulation are refused before training,
    :func:`osad.train.parallel.check_parallel_support`). A NaN or infinite loss
    stops training, naming the step (and the network updating)."""

    def __init__(
        self,
        state: TrainState,
        objectives: dict[str, TrainObjective],
        accumulation: int,
        autocast: Callable,
    ) -> None:
        self.networks, self.autocast = state.networks, autocast
        main = state.networks[MAIN]
        self.parallel = DataParallelStep(main.model, objectives[MAIN], accumulation, autocast)
        self.in_turn = NetworksInTurn(state.networks, objectives) if len(objectives) > 1 else None

    def __call__(
        self, indices: Tensor, load: Load, where: str, stop: Callable[[], bool]
    ) -> StepTotals:
        if self.in_turn is None:
            totals = self.parallel.accumulate(indices, load, stop=stop)
            check_finite(totals.loss, where)
            self.networks[MAIN].optimizer.step()
            return totals
        x, y = load(indices)

        def apply(optimizer: torch.optim.Optimizer, loss: Tensor, network: str) -> None:
            take_step(optimizer, loss, f"{where}, {network} update")

        with self.autocast():
            terms, passes = self.in_turn(x, y, apply)
        correct = int((passes[MAIN].logits.argmax(1) == y).sum().item())
        return StepTotals({k: v.item() for k, v in terms.items()}, correct, len(y), stop())


def _load(
    config: Config, data: OpenSetData, generator: torch.Generator, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """The training images ``indices`` (float, augmented as ``config.data`` says) and labels."""
    x = to_float(data.train_images[indices])
    if config.data.crop_padding or config.data.hflip:
        x = random_crop_flip(x, config.data.crop_padding, config.data.hflip, generator)
    return x, data.train_labels[indices]


def _validation(config: Config, data: OpenSetData, state: TrainState) -> dict[str, float]:
    """Validation accuracy of every network on clean images (``val_accuracy``,
    ``val_NAME_accuracy``), and of the run's model under the training attack
    (``val_attacked_accuracy``); nothing without validation images."""
    if not len(data.val_labels):
        return {}
    record = {}
    with autocast(config.perf, data.val_labels.device):
        for name, network in state.networks.items():
            for attacked in (False, True) if name == MAIN else (False,):
                key = f"val_{'attacked_' if attacked else ''}{term_key(name, 'accuracy')}"
                record[key] = validation_accuracy(
                    network.model, config, data.val_images, data.val_labels, attacked
                )
    return record


def validation_accuracy(
    model: torch.nn.Module, config: Config, images: Tensor, labels: Tensor, attacked: bool
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
