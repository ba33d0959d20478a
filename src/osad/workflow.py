"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both run the configuration's task (:mod:`osad.tasks`): ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning), through the task's
adapter, never by testing which task it is.

Under torchrun (a process group, see :mod:`osad.distributed`) every process
trains or evaluates its share; rank 0 alone creates and writes the run
directory, and a refusal there stops every process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from osad.checkpoint import load_model, save_model
from osad.config import read_yaml, save_config
from osad.data import load_openset
from osad.distributed import agree, is_main, process_device, rank0_first, world
from osad.errors import ConfigError, RunDirError
from osad.eval.sanity import CheckResult, CheckSettings, run_checks
from osad.methods import METHODS
from osad.rundir import MAIN, RUN_MODELS, RunDir
from osad.runlock import run_lock
from osad.runtime import resolve_device
from osad.storage import write_atomic
from osad.tasks import Task, load_saved_config, task_of
from osad.tasks.openset import check_same_source
from osad.tasks.request import EvaluationRequest
from osad.train import TrainResult


def train_run(
    config: Any, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` (of any task, :mod:`osad.tasks`) into a new run directory ``out``
    (config, checkpoints, weights, history).

    Everything that can refuse the run (the configuration, the data, the model's size)
    is checked before the run directory is created, so a refusal leaves nothing behind.
    """
    task = task_of(config)
    _check_processes(task)
    task.prepare_training(config)
    data = rank0_first(lambda: task.load_data(config))
    device = process_device(resolve_device(config.device))
    task.check_training(config, data, device)
    with _writing(Path(out)):
        run = agree(lambda: _create_run(config, out, force))
        record = task.data_record(data)
        if record is not None:
            agree(lambda: write_atomic(run.data_record, json.dumps(record, indent=2) + "\n"))
        result = task.train(config, data, run, progress)
        agree(lambda: save_trained(run, result))
    return run


@contextmanager
def _writing(root: Path) -> Iterator[None]:
    """Hold run directory ``root``'s lock (:func:`osad.runlock.run_lock`, on rank 0 under
    torchrun) for the block: a second writer is refused naming this process."""
    with ExitStack() as stack:
        agree(lambda: stack.enter_context(run_lock(root)))
        yield


def save_trained(run: RunDir, result: TrainResult) -> None:
    """Write the weights of every trained network (``model.safetensors`` for the run's
    model, ``NAME.safetensors`` for network ``NAME``; under torchrun: on rank 0, through
    :func:`osad.distributed.agree`)."""
    for name, network in result.networks().items():
        save_model(run.weights(name), network.model, network.model_name, network.model_kwargs)


def _create_run(config: Any, out: str | Path, force: bool) -> RunDir:
    run = RunDir.create(out, force=force)
    save_config(config, run.config)
    return run


def _check_processes(task: Task) -> None:
    if not task.supports_processes and world().distributed:
        raise ConfigError(
            f"{task.title} (task: {task.name}) trains and tests in one process; run it "
            "without torchrun"
        )


def resume_run(
    path: str | Path,
    *,
    progress: bool = True,
    data_root: str | None = None,
    verify: bool = True,
) -> tuple[RunDir, Path]:
    """Continue an unfinished run from its latest checkpoint, or from ``path`` when it
    is one of the run's checkpoint directories; returns the run and that checkpoint.

    ``data_root`` and ``verify`` say where the data are and whether to check them
    (see :func:`confirm_data_source`: the run directory does not choose them).
    Under torchrun the run may continue on another number of processes than it
    started with (see docs/distributed.md).
    """
    with _writing(agree(lambda: RunDir.open_for_resume(path)[0].root)):
        run, checkpoint, config = agree(lambda: _resume_target(path, data_root, verify))
        task = task_of(config)
        data = rank0_first(lambda: task.load_data(config))
        result = task.train(config, data, run, progress, resume_from=checkpoint)
        agree(lambda: save_trained(run, result))
    return run, checkpoint


def _resume_target(
    path: str | Path, data_root: str | None, verify: bool
) -> tuple[RunDir, Path, Any]:
    """The run, checkpoint and configuration ``osad train --resume path`` continues."""
    run, checkpoint = RunDir.open_for_resume(path)
    config = load_run_config(run)
    confirm_data_source(config, run, data_root, verify)
    return run, task_of(config).resume_point(run, config, checkpoint), config


def load_run_config(run: RunDir) -> Any:
    """The configuration a run was trained with (its format version must be ours)."""
    try:
        data = read_yaml(run.config, str(run.config))
    except ConfigError as exc:
        raise RunDirError(str(exc)) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.config} does not hold a configuration mapping")
    try:
        return load_saved_config(data, source=str(run.config))
    except ConfigError as exc:
        if str(run.config) in str(exc):
            raise
        raise ConfigError(f"{run.config}: {exc}") from None


def confirm_data_source(config: Any, run: RunDir, data_root: str | None, verify: bool) -> None:
    """Point a run's ``config`` at the data the command line chose, in place.

    A run directory may come from someone else, so its ``config.yaml`` does not
    choose where data are read from or turn their checksums off: ``data_root``
    (``--data-root``) replaces the recorded ``data.root``; without it, a recorded
    root other than the default one (``$OSAD_DATA_ROOT`` or the cache) is refused.
    ``verify=False`` (``--no-verify``) turns the checksums off; a run recorded
    with ``data.verify: false`` is refused without it. Raises ConfigError.
    """
    task = task_of(config)
    recorded = config.data.root
    if data_root:
        config.data.root = data_root
    elif recorded and _resolved_root(task, recorded) != _resolved_root(task, ""):
        raise ConfigError(
            f"{run.config} records data.root={recorded[:200]!r}; a run directory does not "
            "choose where data are read from: pass --data-root with the folder to use"
        )
    if task.verifies_data:
        if not config.data.verify and verify:
            raise ConfigError(
                f"{run.config} records data.verify=false; a run directory does not turn the "
                "dataset checksums off: pass --no-verify to read the data unverified"
            )
        config.data.verify = verify


def _resolved_root(task: Task, root: str) -> Path:
    """The folder a data root names (:meth:`osad.tasks.Task.data_folder`), resolved."""
    return task.data_folder(root).expanduser().resolve()


def test_run(
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    data_root: str | None = None,
    verify: bool = True,
    model: str = MAIN,
    attacks: Sequence[str] | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    version: str | None = None,
) -> str:
    """Evaluate a trained run into ``eval/`` (or ``out``) and return the Markdown result table.

    ``data_root`` and ``verify`` say where the data are and whether to check them
    (see :func:`confirm_data_source`: the run directory does not choose them).
    ``model`` names the network of the run to evaluate (``main``, the run's model, into
    ``eval/``; another, e.g. ``peer`` of an ``osdn-caml`` run, with the same protocol
    into ``eval-NAME/``). ``overrides`` (``key=value``, the
    ``eval.*`` keys only) change the run's evaluation settings; ``attacks``, ``scores``,
    ``pairings`` and the ensemble ``version`` narrow or extend them (see
    :func:`osad.eval.options.select_evaluation`).

    Incremental (both tasks, :func:`osad.eval.settings.reusable`): a condition (an
    anti-spoofing run: a held-out domain) already in the results under identical
    settings (:func:`osad.eval.protocol.condition_settings`,
    :func:`osad.fas.evaluate.target_settings`) is reused, new ones are
    added, earlier ones are kept; a condition asked for under other settings than the
    stored one is refused unless ``force``, which recomputes and replaces the results.
    The results are written into a temporary folder that replaces the old one when
    complete (:func:`osad.storage.replace_dir`): on any failure the previous results
    stay intact. The run directory is locked for the whole evaluation.

    Raises :class:`~osad.errors.RunDirError`, :class:`~osad.errors.ConfigError` (a bad
    override or selection), :class:`~osad.errors.StorageError` (a failed write).
    """
    if model not in RUN_MODELS:
        raise RunDirError(
            f"unknown model '{model}' to test; choose one of: {', '.join(RUN_MODELS)}"
        )
    run = agree(lambda: RunDir.open(run_dir))
    with _writing(run.root):
        config = agree(lambda: _test_target(run, model))
        dest = Path(out) if out is not None else run.eval_dir_of(model)
        task = task_of(config)
        _check_processes(task)
        confirm_data_source(config, run, data_root, verify)
        device = process_device(resolve_device(config.device))
        selection = {"attacks": attacks, "scores": scores, "pairings": pairings, "version": version}
        request = EvaluationRequest(model, dest, device, force, progress, selection, overrides)
        return task.test(run, config, request)


def _test_target(run: RunDir, model: str) -> Any:
    weights = run.weights(model)
    if not weights.is_file():
        methods = [m.name for m in METHODS.values() if any(n.name == model for n in m.networks)]
        raise RunDirError(
            f"{run.root} has no {weights.name}: only {', '.join(methods)} runs train a "
            f"{model} network"
        )
    return load_run_config(run)


def check_run(
    run_dir: str | Path,
    settings: CheckSettings | None = None,
    *,
    data_root: str | None = None,
    verify: bool = True,
    force: bool = False,
    progress: bool = True,
) -> list[CheckResult]:
    """Run the gradient-masking sanity checks on a trained open-set run and save them
    to ``RUN_DIR/check.json`` (an existing one is replaced only with ``force``, and only
    once the new one is complete); ``data_root`` and ``verify`` as in :func:`test_run`;
    ``progress`` shows bars with an ETA on stderr."""
    run = RunDir.open(run_dir)
    with _writing(run.root):
        if run.check.exists() and not force:
            raise RunDirError(f"{run.check} already exists; pass --force to replace it")
        config = load_run_config(run)
        task = task_of(config)
        if not task.supports_check:
            raise ConfigError(f"osad check applies to open-set runs, not {task.title}")
        confirm_data_source(config, run, data_root, verify)
        model = load_model(run.model, process_device(resolve_device(config.device)))
        settings = settings or CheckSettings()
        data = rank0_first(lambda: load_openset(config.data))
        check_same_source(run, data)
        results = run_checks(model, data, config, settings, progress=progress and is_main())
        document = {
            "passed": all(r.passed for r in results),
            "settings": asdict(settings),
            "checks": [asdict(r) for r in results],
        }
        agree(lambda: write_atomic(run.check, json.dumps(document, indent=2) + "\n"))
    return results
