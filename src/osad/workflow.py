"""The two steps of a run, shared by the CLI, ``main.py`` and Python users."""

from __future__ import annotations

from pathlib import Path

import yaml

from osad.checkpoint import load_model, save_model
from osad.config import Config, check_perf_device, config_from_dict, save_config
from osad.data import load_openset
from osad.errors import RunDirError
from osad.eval import evaluate, write_results
from osad.perf import prepare_model
from osad.rundir import RunDir
from osad.runtime import resolve_device
from osad.train import train


def train_run(
    config: Config, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, weights, history)."""
    # Refuse CUDA-only switches before anything is written.
    check_perf_device(config.perf, str(resolve_device(config.device)))
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    data = load_openset(config.data)
    result = train(config, data, run=run, progress=progress)
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    return run


def load_run_config(run: RunDir) -> Config:
    """The configuration a run was trained with."""
    try:
        data = yaml.safe_load(run.config.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{run.config} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.config} does not hold a configuration mapping")
    return config_from_dict(data)


def test_run(run_dir: str | Path, *, force: bool = False, progress: bool = True) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table."""
    run = RunDir.open(run_dir)
    if run.eval_dir.exists() and any(run.eval_dir.iterdir()) and not force:
        raise RunDirError(f"{run.eval_dir} already holds results; pass --force to overwrite them")
    config = load_run_config(run)
    device = resolve_device(config.device)
    model = prepare_model(load_model(run.model, device), config.perf, device)
    data = load_openset(config.data)
    result = evaluate(model, data, config, progress=progress)
    title = f"{config.method} on {config.data.name} split {config.data.split}"
    return write_results(result, config, run.eval_dir, title)
