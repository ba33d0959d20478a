"""The steps of a run, shared by the CLI, ``main.py`` and Python users."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from osad.checkpoint import (
    CheckpointStore,
    first_difference,
    load_state_checked,
    read_weights,
    save_model,
)
from osad.config import Config, config_from_dict, save_config
from osad.data import OpenSetData, load_openset
from osad.errors import CheckpointError, RunDirError
from osad.eval import evaluate, write_results
from osad.rundir import RunDir
from osad.runtime import deterministic_mode, resolve_device
from osad.train import build_model_for, train


def train_run(
    config: Config, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, checkpoints, weights, history)."""
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    data = load_openset(config.data)
    result = train(config, data, run=run, progress=progress)
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    return run


def resume_run(path: str | Path, *, progress: bool = True) -> tuple[RunDir, Path]:
    """Continue an unfinished run from its latest checkpoint, or from ``path`` when it
    is one of the run's checkpoint directories; returns the run and that checkpoint."""
    run, checkpoint = RunDir.open_for_resume(path)
    config = load_run_config(run)
    if checkpoint is None:
        checkpoint = CheckpointStore(run, config.checkpoint.keep).latest()
    if checkpoint is None:
        raise RunDirError(
            f"{run.root} has no checkpoint yet, nothing to resume; start it again with: "
            f"osad train --out {run.root} --force"
        )
    data = load_openset(config.data)
    result = train(config, data, run=run, progress=progress, resume_from=checkpoint)
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    return run, checkpoint


def load_run_config(run: RunDir) -> Config:
    """The configuration a run was trained with (its format version must be ours)."""
    try:
        data = yaml.safe_load(run.config.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{run.config} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.config} does not hold a configuration mapping")
    return config_from_dict(data, source=str(run.config), require_version=True)


def load_run_model(
    run: RunDir, config: Config, data: OpenSetData, device: torch.device
) -> nn.Module:
    """The run's trained weights in the model its configuration describes, in eval mode.

    Weights of another architecture are refused naming the first mismatching
    parameter; weights of the same shapes but another recipe (e.g. another
    denoising filter) naming the setting that differs.
    """
    model, name, kwargs = build_model_for(config, data)
    state, (saved_name, saved_kwargs) = read_weights(run.model)
    source = f"weights file {run.model}"
    load_state_checked(model, state, source)
    difference = first_difference({"model": saved_name, **saved_kwargs}, {"model": name, **kwargs})
    if difference:
        key, saved_value, value = difference
        raise CheckpointError(
            f"{source} was made with {key}={saved_value!r}, the run's config gives {value!r}"
        )
    return model.to(device).eval()


def test_run(run_dir: str | Path, *, force: bool = False, progress: bool = True) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table."""
    run = RunDir.open(run_dir)
    if run.eval_dir.exists() and any(run.eval_dir.iterdir()) and not force:
        raise RunDirError(f"{run.eval_dir} already holds results; pass --force to overwrite them")
    config = load_run_config(run)
    data = load_openset(config.data)
    with deterministic_mode(config.deterministic):
        model = load_run_model(run, config, data, resolve_device(config.device))
        result = evaluate(model, data, config, progress=progress)
    return write_results(result, config, run.eval_dir, run_title(config))


def run_title(config: Config) -> str:
    d = config.data
    classes = (
        f"known classes {','.join(map(str, d.known_classes))}"
        if d.known_classes
        else f"split {d.split}"
    )
    return f"{config.method} on {d.name} {classes}"
