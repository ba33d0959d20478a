"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both dispatch on the configuration's ``task``: ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from osad.checkpoint import load_model, save_model
from osad.config import Config, check_perf_device, make_task_config, save_config
from osad.data import load_openset
from osad.data.fas import load_fas
from osad.errors import ConfigError, RunDirError
from osad.eval import evaluate, write_results
from osad.eval.fas import evaluate_fas, write_fas_results
from osad.eval.figures import write_figures
from osad.eval.options import select_evaluation
from osad.eval.sanity import CheckResult, CheckSettings, run_checks
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
    if not fas:
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
    data = load_fas(config.data, config.depth_size) if fas else load_openset(config.data)
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    trainer = train_meta if fas else train
    result = trainer(config, data, run=run, progress=progress)
    save_model(run.model, result.model, result.model_name, result.model_kwargs)
    return run


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
    attacks: Sequence[str] | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
) -> str:
    """Evaluate a trained run; writes ``eval/`` and returns the Markdown result table.

    ``data_root`` points at the datasets when they moved since training;
    ``attacks``, ``scores`` and ``pairings`` narrow or extend the run's
    evaluation (see :func:`osad.eval.options.select_evaluation`).
    """
    run = RunDir.open(run_dir)
    if run.eval_dir.exists() and any(run.eval_dir.iterdir()) and not force:
        raise RunDirError(f"{run.eval_dir} already holds results; pass --force to overwrite them")
    config = load_run_config(run)
    if data_root:
        config.data.root = data_root
    device = resolve_device(config.device)
    model = load_model(run.model, device)
    selection = {"attacks": attacks, "scores": scores, "pairings": pairings}
    if isinstance(config, FasConfig):
        chosen = [f"--{k}" for k, v in selection.items() if v is not None]
        if chosen:
            raise ConfigError(f"{', '.join(chosen)} apply to open-set runs, not face anti-spoofing")
        data = load_fas(config.data, config.depth_size)
        result = evaluate_fas(model, data, config, progress=progress)
        title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
        return write_fas_results(result, config, run.eval_dir, run.roc_figure, title)
    config = select_evaluation(config, **selection)
    model = prepare_model(model, config.perf, device)
    data = load_openset(config.data)
    result = evaluate(model, data, config, progress=progress)
    title = f"{config.method} on {config.data.name} split {config.data.split}"
    table = write_results(result, config, run.eval_dir, title)
    if config.eval.figures:
        write_figures(result, model, data, config, run.figures)
    return table


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
    model = load_model(run.model, resolve_device(config.device))
    settings = settings or CheckSettings()
    results = run_checks(model, load_openset(config.data), config, settings)
    document = {
        "passed": all(r.passed for r in results),
        "settings": asdict(settings),
        "checks": [asdict(r) for r in results],
    }
    run.check.write_text(json.dumps(document, indent=2) + "\n")
    return results
