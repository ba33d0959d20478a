"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both dispatch on the configuration's ``task``: ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning).

Under torchrun (a process group, see :mod:`osad.distributed`) every process
trains or evaluates its share; rank 0 alone creates and writes the run
directory, and a refusal there stops every process.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from osad.checkpoint import load_model, save_model
from osad.config import Config, check_perf_device, make_task_config, save_config
from osad.data import load_openset
from osad.data.fas import load_fas
from osad.distributed import agree, process_device, rank0_first, world
from osad.errors import ConfigError, RunDirError
from osad.eval import evaluate, write_results
from osad.eval.fas import evaluate_fas, write_fas_results
from osad.fas_config import FasConfig
from osad.perf import prepare_model
from osad.rundir import RunDir
from osad.runtime import resolve_device
from osad.train import train
from osad.train.meta import train_meta


def train_run(
    config: Config | FasConfig, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, weights, history).

    The data are loaded first, so a missing dataset leaves no run directory behind.
    """
    fas = isinstance(config, FasConfig)
    _check_single_process(fas)
    if not fas:
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
    data = rank0_first(
        lambda: load_fas(config.data, config.depth_size) if fas else load_openset(config.data)
    )
    run = agree(lambda: _create_run(config, out, force))
    trainer = train_meta if fas else train
    result = trainer(config, data, run=run, progress=progress)
    agree(lambda: save_model(run.model, result.model, result.model_name, result.model_kwargs))
    return run


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


def load_run_config(run: RunDir) -> Config | FasConfig:
    """The configuration a run was trained with."""
    try:
        data = yaml.safe_load(run.config.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{run.config} is not valid YAML") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.config} does not hold a configuration mapping")
    return make_task_config(data)


def test_run(
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    data_root: str | None = None,
) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table.

    ``data_root`` points at the datasets when they moved since training.
    """
    run = RunDir.open(run_dir)
    if run.eval_dir.exists() and any(run.eval_dir.iterdir()) and not force:
        raise RunDirError(f"{run.eval_dir} already holds results; pass --force to overwrite them")
    config = load_run_config(run)
    _check_single_process(isinstance(config, FasConfig))
    if data_root:
        config.data.root = data_root
    device = process_device(resolve_device(config.device))
    model = load_model(run.model, device)
    if isinstance(config, FasConfig):
        data = load_fas(config.data, config.depth_size)
        result = evaluate_fas(model, data, config, progress=progress)
        title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
        return write_fas_results(result, config, run.eval_dir, run.roc_figure, title)
    model = prepare_model(model, config.perf, device)
    data = rank0_first(lambda: load_openset(config.data))
    result = evaluate(model, data, config, progress=progress)
    title = f"{config.method} on {config.data.name} split {config.data.split}"
    return agree(lambda: write_results(result, config, run.eval_dir, title))
