"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both dispatch on the configuration's ``task``: ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning).
"""

from __future__ import annotations

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
from osad.errors import CheckpointError, RunDirError
from osad.eval import evaluate, write_results
from osad.eval.fas import evaluate_fas, write_fas_results
from osad.fas_config import FasConfig
from osad.perf import prepare_model
from osad.rundir import RUN_MODELS, RunDir
from osad.runtime import deterministic_mode, resolve_device
from osad.train import TrainResult, build_model_for, train
from osad.train.meta import train_meta
from osad.train.methods import PEER_METHOD


def train_run(
    config: Config | FasConfig, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, checkpoints, weights, history).

    The data are loaded first, so a missing dataset leaves no run directory behind.
    """
    fas = isinstance(config, FasConfig)
    if not fas:
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
    data = load_fas(config.data, config.depth_size) if fas else load_openset(config.data)
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    trainer = train_meta if fas else train
    save_trained(run, trainer(config, data, run=run, progress=progress))
    return run


def save_trained(run: RunDir, result: TrainResult) -> None:
    """Write the trained weights, and those of the peer network if the method has one."""
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    if result.peer is not None:
        peer = result.peer
        save_model(run.peer_model, peer.model, peer.model_name, peer.model_kwargs)


def resume_run(
    path: str | Path, *, progress: bool = True, data_root: str | None = None
) -> tuple[RunDir, Path]:
    """Continue an unfinished run from its latest checkpoint, or from ``path`` when it
    is one of the run's checkpoint directories; returns the run and that checkpoint.

    ``data_root`` points at the datasets when they moved since training started.
    """
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
    data = load_openset(config.data)
    save_trained(run, train(config, data, run=run, progress=progress, resume_from=checkpoint))
    return run, checkpoint


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
) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table.

    ``data_root`` points at the datasets when they moved since training.
    ``model="peer"`` evaluates the peer network of an ``osdn-caml`` run instead,
    with the same protocol, into ``eval-peer/``.
    """
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
    config = load_run_config(run)
    if data_root:
        config.data.root = data_root
    device = resolve_device(config.device)
    if isinstance(config, FasConfig):
        data = load_fas(config.data, config.depth_size)
        result = evaluate_fas(load_model(run.model, device), data, config, progress=progress)
        title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
        return write_fas_results(result, config, run.eval_dir, run.roc_figure, title)
    data = load_openset(config.data)
    with deterministic_mode(config.deterministic):
        network = load_run_model(run, config, data, device, model)
        network = prepare_model(network, config.perf, device)
        result = evaluate(network, data, config, progress=progress)
    return write_results(result, config, out, run_title(config, model))


def run_title(config: Config, model: str = "main") -> str:
    d = config.data
    classes = f"known classes {','.join(map(str, d.known))}" if d.known else f"split {d.split}"
    method = f"{config.method} peer network" if model == "peer" else config.method
    return f"{method} on {d.name} {classes}"
