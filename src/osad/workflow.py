"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both dispatch on the configuration's ``task``: ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning).

Under torchrun (a process group, see :mod:`osad.distributed`) every process
trains or evaluates its share; rank 0 alone creates and writes the run
directory, and a refusal there stops every process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from torch import nn

from osad.checkpoint import (
    CheckpointStore,
    first_difference,
    load_model,
    load_state_checked,
    read_weights,
    save_model,
)
from osad.config import Config, check_perf_device, load_saved_config, save_config
from osad.data import OpenSetData, load_openset
from osad.data.fas import load_fas
from osad.distributed import agree, process_device, rank0_first, world
from osad.errors import CheckpointError, ConfigError, RunDirError
from osad.eval import evaluate, write_results
from osad.eval.fas import evaluate_fas, write_fas_results
from osad.eval.figures import write_figures
from osad.eval.options import select_evaluation
from osad.eval.sanity import CheckResult, CheckSettings, run_checks
from osad.fas_config import FasConfig
from osad.perf import prepare_model
from osad.rundir import RUN_MODELS, RunDir
from osad.runtime import deterministic_mode, resolve_device
from osad.train import TrainResult, build_model_for, train
from osad.train.loop import check_parallel_support
from osad.train.meta import train_meta
from osad.train.methods import PEER_METHOD


def train_run(
    config: Config | FasConfig, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, checkpoints, weights, history).

    The data are loaded first, so a missing dataset leaves no run directory behind.
    """
    fas = isinstance(config, FasConfig)
    _check_single_process(fas)
    if not fas:
        check_parallel_support(config)
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
    data = rank0_first(
        lambda: load_fas(config.data, config.depth_size) if fas else load_openset(config.data)
    )
    run = agree(lambda: _create_run(config, out, force))
    trainer = train_meta if fas else train
    result = trainer(config, data, run=run, progress=progress)
    agree(lambda: save_trained(run, result))
    return run


def save_trained(run: RunDir, result: TrainResult) -> None:
    """Write the trained weights, and those of the peer network if the method has one
    (under torchrun: on rank 0, through :func:`osad.distributed.agree`)."""
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    if result.peer is not None:
        peer = result.peer
        save_model(run.peer_model, peer.model, peer.model_name, peer.model_kwargs)


def _create_run(config: Config | FasConfig, out: str | Path, force: bool) -> RunDir:
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    return run


def _check_single_process(fas: bool) -> None:
    if fas and world().distributed:
        raise ConfigError(
            "face anti-spoofing (task: fas) trains and tests in one process; run it without "
            "torchrun"
        )


def resume_run(
    path: str | Path, *, progress: bool = True, data_root: str | None = None
) -> tuple[RunDir, Path]:
    """Continue an unfinished run from its latest checkpoint, or from ``path`` when it
    is one of the run's checkpoint directories; returns the run and that checkpoint.

    ``data_root`` points at the datasets when they moved since training started.
    Under torchrun the run may continue on another number of processes than it
    started with (see docs/distributed.md).
    """
    run, checkpoint, config = agree(lambda: _resume_target(path, data_root))
    data = rank0_first(lambda: load_openset(config.data))
    result = train(config, data, run=run, progress=progress, resume_from=checkpoint)
    agree(lambda: save_trained(run, result))
    return run, checkpoint


def _resume_target(path: str | Path, data_root: str | None) -> tuple[RunDir, Path, Config]:
    """The run, checkpoint and configuration ``osad train --resume path`` continues."""
    run, checkpoint = RunDir.open_for_resume(path)
    config = load_run_config(run)
    if data_root:
        config.data.root = data_root
    if isinstance(config, FasConfig):
        raise RunDirError(
            f"{run.root} is an anti-spoofing run, which does not checkpoint mid-training; "
            f"start it again with: osad train --out {run.root} --force"
        )
    if checkpoint is None:
        checkpoint = CheckpointStore(run, config.checkpoint.keep).latest()
    if checkpoint is None:
        raise RunDirError(
            f"{run.root} has no checkpoint yet, nothing to resume; start it again with: "
            f"osad train --out {run.root} --force"
        )
    check_parallel_support(config)
    return run, checkpoint, config


def load_run_config(run: RunDir) -> Config | FasConfig:
    """The configuration a run was trained with (its format version must be ours)."""
    try:
        data = yaml.safe_load(run.config.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{run.config} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.config} does not hold a configuration mapping")
    return load_saved_config(data, source=str(run.config))


def load_run_model(
    run: RunDir, config: Config, data: OpenSetData, device: torch.device, which: str = "main"
) -> nn.Module:
    """The run's trained weights in the model its configuration describes, in eval mode;
    ``which="peer"``: the peer network of an osdn-caml run.

    Weights of another architecture are refused naming the first mismatching
    parameter; weights of the same shapes but another recipe (e.g. another
    denoising filter) naming the setting that differs.
    """
    method = PEER_METHOD if which == "peer" else None
    model, name, kwargs = build_model_for(config, data, method)
    path = run.weights(which)
    state, (saved_name, saved_kwargs) = read_weights(path)
    source = f"weights file {path}"
    load_state_checked(model, state, source)
    difference = first_difference({"model": saved_name, **saved_kwargs}, {"model": name, **kwargs})
    if difference:
        key, saved_value, value = difference
        raise CheckpointError(
            f"{source} was made with {key}={saved_value!r}, the run's config gives {value!r}"
        )
    return model.to(device).eval()


def test_run(
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    data_root: str | None = None,
    model: str = "main",
    attacks: Sequence[str] | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
    version: str | None = None,
) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table.

    ``data_root`` points at the datasets when they moved since training.
    ``model="peer"`` evaluates the peer network of an ``osdn-caml`` run instead,
    with the same protocol, into ``eval-peer/``. ``attacks``, ``scores``,
    ``pairings`` and the ensemble ``version`` narrow or extend the run's evaluation (see
    :func:`osad.eval.options.select_evaluation`).
    """
    run, config = agree(lambda: _test_target(run_dir, model, force))
    _check_single_process(isinstance(config, FasConfig))
    if data_root:
        config.data.root = data_root
    device = process_device(resolve_device(config.device))
    selection = {"attacks": attacks, "scores": scores, "pairings": pairings, "version": version}
    if isinstance(config, FasConfig):
        chosen = [f"--{k}" for k, v in selection.items() if v is not None]
        if chosen:
            raise ConfigError(f"{', '.join(chosen)} apply to open-set runs, not face anti-spoofing")
        data = load_fas(config.data, config.depth_size)
        result = evaluate_fas(load_model(run.model, device), data, config, progress=progress)
        title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
        return write_fas_results(result, config, run.eval_dir, run.roc_figure, title)
    config = select_evaluation(config, **selection)
    data = rank0_first(lambda: load_openset(config.data))
    with deterministic_mode(config.deterministic):
        network = load_run_model(run, config, data, device, model)
        network = prepare_model(network, config.perf, device)
        result = evaluate(network, data, config, progress=progress)
        out = run.eval_dir_of(model)
        table = agree(lambda: write_results(result, config, out, run_title(config, model)))
        if config.eval.figures:
            # Every process computes the figures' attacks (sharded); rank 0 saves them.
            write_figures(result, network, data, config, run.figures_of(model))
    return table


def _test_target(run_dir: str | Path, model: str, force: bool) -> tuple[RunDir, Config | FasConfig]:
    if model not in RUN_MODELS:
        raise RunDirError(
            f"unknown model '{model}' to test; choose one of: {', '.join(RUN_MODELS)}"
        )
    run = RunDir.open(run_dir)
    weights = run.weights(model)
    if not weights.is_file():
        raise RunDirError(
            f"{run.root} has no {weights.name}: only osdn-caml runs train a peer network"
        )
    out = run.eval_dir_of(model)
    if out.exists() and any(out.iterdir()) and not force:
        raise RunDirError(f"{out} already holds results; pass --force to overwrite them")
    return run, load_run_config(run)


def run_title(config: Config, model: str = "main") -> str:
    d = config.data
    classes = f"known classes {','.join(map(str, d.known))}" if d.known else f"split {d.split}"
    method = f"{config.method} peer network" if model == "peer" else config.method
    return f"{method} on {d.name} {classes}"


def check_run(
    run_dir: str | Path, settings: CheckSettings | None = None, *, data_root: str | None = None
) -> list[CheckResult]:
    """Run the gradient-masking sanity checks on a trained open-set run and save them
    to ``RUN_DIR/check.json``."""
    run = RunDir.open(run_dir)
    config = load_run_config(run)
    if isinstance(config, FasConfig):
        raise ConfigError("osad check applies to open-set runs, not face anti-spoofing")
    if data_root:
        config.data.root = data_root
    model = load_model(run.model, process_device(resolve_device(config.device)))
    settings = settings or CheckSettings()
    results = run_checks(model, rank0_first(lambda: load_openset(config.data)), config, settings)
    document = {
        "passed": all(r.passed for r in results),
        "settings": asdict(settings),
        "checks": [asdict(r) for r in results],
    }
    agree(lambda: run.check.write_text(json.dumps(document, indent=2) + "\n"))
    return results
