"""The two steps of a run, shared by the CLI, ``main.py`` and Python users.

Both dispatch on the configuration's ``task``: ``openset`` (OSDN and its
baselines) or ``fas`` (face anti-spoofing by meta-learning).

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

import torch
from torch import nn

from osad.checkpoint import (
    CheckpointStore,
    first_difference,
    load_model,
    load_state_checked,
    read_weights,
    save_model,
)
from osad.config import (
    Config,
    check_perf_device,
    expand_key,
    load_saved_config,
    make_config,
    parse_override,
    read_yaml,
    resolved_dict,
    save_config,
)
from osad.data import (
    FOLDER,
    OpenSetData,
    folder_root,
    is_folder_path,
    load_openset,
    resolve_data_root,
    source_name,
    unknown_source_name,
)
from osad.data.fas import load_fas
from osad.distributed import agree, is_main, process_device, rank0_first, world
from osad.errors import CheckpointError, ConfigError, DataError, RunDirError
from osad.eval import evaluate, write_results
from osad.eval.any_model import data_counts, data_source
from osad.eval.fas import evaluate_fas, write_fas_results
from osad.eval.figures import write_figures
from osad.eval.options import select_evaluation
from osad.eval.protocol import EvalResult, condition_settings
from osad.eval.report import read_conditions, results_table
from osad.eval.results import read_metrics
from osad.eval.sanity import CheckResult, CheckSettings, run_checks
from osad.fas_config import FasConfig
from osad.perf import prepare_model
from osad.rundir import MAIN, RUN_MODELS, RunDir
from osad.runlock import run_lock
from osad.runtime import deterministic_mode, resolve_device
from osad.storage import recover_dir, replace_dir, sha256_file, tensors_sha256, write_atomic
from osad.train import TrainResult, build_model_for, train
from osad.train.factory import check_training
from osad.train.meta import check_meta_training, train_meta
from osad.train.methods import METHODS
from osad.train.parallel import check_parallel_support


def train_run(
    config: Config | FasConfig, out: str | Path, *, force: bool = False, progress: bool = True
) -> RunDir:
    """Train ``config`` into a new run directory ``out`` (config, checkpoints, weights, history).

    Everything that can refuse the run (the configuration, the data, the model's size)
    is checked before the run directory is created, so a refusal leaves nothing behind.
    """
    fas = isinstance(config, FasConfig)
    _check_single_process(fas)
    if not fas:
        check_parallel_support(config)
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
    if not fas:  # folders by absolute path: osad test may run from another directory
        if config.data.name == FOLDER:
            config.data.root = str(folder_root(config.data))
        if is_folder_path(config.data.unknown):
            config.data.unknown = str(Path(config.data.unknown).expanduser().resolve())
    data = rank0_first(
        lambda: load_fas(config.data, config.depth_size) if fas else load_openset(config.data)
    )
    device = process_device(resolve_device(config.device))
    if fas:
        check_meta_training(config, device)
    else:
        check_training(config, data, device)
    with _writing(Path(out)):
        run = agree(lambda: _create_run(config, out, force))
        if not fas:
            agree(lambda: write_atomic(run.data_record, json.dumps(data.source, indent=2) + "\n"))
        trainer = train_meta if fas else train
        result = trainer(config, data, run=run, progress=progress)
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
        data = rank0_first(lambda: load_openset(config.data))
        result = train(config, data, run=run, progress=progress, resume_from=checkpoint)
        agree(lambda: save_trained(run, result))
    return run, checkpoint


def _resume_target(
    path: str | Path, data_root: str | None, verify: bool
) -> tuple[RunDir, Path, Config]:
    """The run, checkpoint and configuration ``osad train --resume path`` continues."""
    run, checkpoint = RunDir.open_for_resume(path)
    config = load_run_config(run)
    confirm_data_source(config, run, data_root, verify)
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


def confirm_data_source(
    config: Config | FasConfig, run: RunDir, data_root: str | None, verify: bool
) -> None:
    """Point a run's ``config`` at the data the command line chose, in place.

    A run directory may come from someone else, so its ``config.yaml`` does not
    choose where data are read from or turn their checksums off: ``data_root``
    (``--data-root``) replaces the recorded ``data.root``; without it, a recorded
    root other than the default one (``$OSAD_DATA_ROOT`` or the cache) is refused.
    ``verify=False`` (``--no-verify``) turns the checksums off; a run recorded
    with ``data.verify: false`` is refused without it. Raises ConfigError.
    """
    recorded = config.data.root
    if data_root:
        config.data.root = data_root
    elif recorded and _resolved_root(config, recorded) != _resolved_root(config, ""):
        raise ConfigError(
            f"{run.config} records data.root={recorded[:200]!r}; a run directory does not "
            "choose where data are read from: pass --data-root with the folder to use"
        )
    if isinstance(config, Config):
        if not config.data.verify and verify:
            raise ConfigError(
                f"{run.config} records data.verify=false; a run directory does not turn the "
                "dataset checksums off: pass --no-verify to read the data unverified"
            )
        config.data.verify = verify


def _resolved_root(config: Config | FasConfig, root: str) -> Path:
    """The folder a data root names: see :func:`osad.data.resolve_data_root` (open-set)
    and :func:`osad.data.fas.load_frame_lists` (anti-spoofing, relative to the cwd)."""
    folder = Path(root or ".") if isinstance(config, FasConfig) else resolve_data_root(root)
    return folder.expanduser().resolve()


def load_run_model(
    run: RunDir, config: Config, data: OpenSetData, device: torch.device, network: str = MAIN
) -> nn.Module:
    """The trained weights of the run's network ``network`` (``main``: its model;
    ``peer``: the peer network of an osdn-caml run) in the model its configuration
    describes, in eval mode.

    Weights of another architecture are refused naming the first mismatching
    parameter; weights of the same shapes but another recipe (e.g. another
    denoising filter) naming the setting that differs.
    """
    model, name, kwargs = build_model_for(config, data, network)
    path = run.weights(network)
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

    Incremental (open-set runs): a condition already in the results under identical
    settings (:func:`osad.eval.protocol.condition_settings`) is reused, new ones are
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
        _check_single_process(isinstance(config, FasConfig))
        confirm_data_source(config, run, data_root, verify)
        device = process_device(resolve_device(config.device))
        selection = {"attacks": attacks, "scores": scores, "pairings": pairings, "version": version}
        if isinstance(config, FasConfig):
            chosen = [f"--{k}" for k, v in selection.items() if v is not None]
            chosen += ["key=value overrides"] if overrides else []
            if chosen:
                raise ConfigError(
                    f"{', '.join(chosen)} apply to open-set runs, not face anti-spoofing"
                )
            return _test_fas(run, config, dest, force, device, progress)
        config = select_evaluation(evaluation_config(config, overrides), **selection)
        return _test_openset(run, config, model, dest, force, device, progress)


def _test_openset(
    run: RunDir,
    config: Config,
    model: str,
    dest: Path,
    force: bool,
    device: torch.device,
    progress: bool,
) -> str:
    """The incremental evaluation of :func:`test_run` (its caller holds the lock)."""
    data = rank0_first(lambda: load_openset(config.data))
    check_same_source(run, data)
    evaluated = _provenance(run, model, config, data)
    settings = json.loads(json.dumps(condition_settings(config, evaluated)))
    reused, kept = agree(lambda: _reusable(dest, settings, force))
    if len(reused) == len(settings):  # everything asked for is stored already
        return results_table(read_conditions(dest, [*reused, *kept]))
    with deterministic_mode(config.deterministic):
        network = load_run_model(run, config, data, device, model)
        network = prepare_model(network, config.perf, device)
        result = evaluate(network, data, config, progress, skip=set(reused) - {"clean"})
        result = _merged(result, dest, list(settings), reused, list(kept))
        with ExitStack() as stack:
            staged = agree(lambda: stack.enter_context(replace_dir(dest)))
            title = run_title(config, model)
            stored = {**kept, **settings}
            table = agree(
                lambda: write_results(
                    result, config, staged, title, evaluated, stored, run_config=True
                )
            )
            if config.eval.figures:
                # Every process computes the figures' attacks (sharded); rank 0 saves them.
                write_figures(result, network, data, config, staged / "figures", progress)
    return table


def _provenance(run: RunDir, model: str, config: Config, data: OpenSetData) -> dict[str, Any]:
    """What ``osad test`` evaluates, for metrics.json's ``evaluated``: the weights file
    (which network of the run, its sha256) and the data (osad's dataset, split and
    classes, sizes, and a sha256 fingerprint of every image and label tensor)."""
    weights = run.weights(model)
    tensors = (
        data.train_images,
        data.train_labels,
        data.val_images,
        data.val_labels,
        data.test_images,
        data.test_labels,
        data.test_classes,
    )
    return {
        "model": {"name": model, "weights": weights.name, "weights_sha256": sha256_file(weights)},
        "data": {
            "source": data_source(config.data),
            "known_classes": list(data.known_classes),
            "unknown_classes": list(data.unknown_classes),
            **data_counts(data),
            "fingerprint": tensors_sha256(tensors),
        },
    }


def evaluation_config(config: Config, overrides: Sequence[str]) -> Config:
    """``config`` with ``key=value`` overrides of its evaluation settings, parsed and
    validated as training overrides are (:func:`osad.config.make_config`).

    Raises :class:`~osad.errors.ConfigError` for a malformed override, an invalid value,
    or a key outside ``eval.*`` (those change what was trained or on which data).
    """
    for text in overrides:
        key = expand_key(parse_override(text)[0])
        if key.split(".")[0] != "eval":
            raise ConfigError(
                f"osad test takes eval.* overrides only, not '{key}': it changes the trained "
                "model or its data (train a new run; moved data: --data-root)"
            )
    return make_config(resolved_dict(config), overrides) if overrides else config


def _reusable(
    dest: Path, settings: dict[str, dict[str, Any]], force: bool
) -> tuple[list[str], dict[str, Any]]:
    """(conditions of ``settings`` already in ``dest`` under identical settings, the other
    conditions stored there, kept, with their stored settings). Recovers what a killed
    evaluation left; refuses a ``dest`` holding files but no metrics.json (even with
    ``force``), and a condition stored under other settings unless ``force`` (then
    nothing is reused or kept)."""
    recover_dir(dest)
    if not dest.is_dir() or not any(dest.iterdir()):
        return [], {}
    path = dest / "metrics.json"
    if not path.is_file():  # --force replaces an evaluation, never any other folder
        raise RunDirError(
            f"{dest} holds files but no {path.name}, so it is not an osad evaluation; "
            "choose another --out, or remove it yourself"
        )
    if force:
        return [], {}
    remedy = "pass --force to replace the evaluation, or --out DIR to write elsewhere"
    stored = read_metrics(path, remedy=remedy).document["conditions"]
    reused = []
    for name, wanted in settings.items():
        if name not in stored:
            continue
        difference = _first_difference(stored[name].get("settings"), wanted)
        if difference:
            raise RunDirError(
                f"{path} holds condition '{name}' computed under other settings "
                f"({difference}); pass --force to recompute the evaluation, or --out DIR to "
                "write it elsewhere"
            )
        reused.append(name)
    return reused, {n: c.get("settings") for n, c in stored.items() if n not in settings}


def _first_difference(stored: Any, wanted: Any, where: str = "") -> str:
    """The first setting that differs, as ``key: stored there, wanted now`` ('' if none)."""
    if stored is None and not where:
        return "it records no settings: written by an older osad"
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in [*wanted, *(k for k in stored if k not in wanted)]:
            found = _first_difference(stored.get(key), wanted.get(key), f"{where}{key}.")
            if found:
                return found
        return ""
    if stored != wanted:
        return f"{where.rstrip('.')}: {stored!r} there, {wanted!r} now"
    return ""


def _merged(
    result: EvalResult, dest: Path, order: list[str], reused: list[str], kept: list[str]
) -> EvalResult:
    """``result`` with the conditions ``reused`` and ``kept`` read back from ``dest``:
    the conditions asked for in ``order``, then the kept ones."""
    if not (reused or kept):
        return result
    old = read_conditions(dest, [n for n in (*reused, *kept) if n != "clean"])
    by_name = {c.name: c for c in (*old.conditions, *result.conditions)}
    names = [*order, *(n for n in kept if n not in order)]
    return EvalResult([by_name[n] for n in names], result.test_labels, result.test_classes)


def _test_fas(
    run: RunDir, config: FasConfig, dest: Path, force: bool, device: torch.device, progress: bool
) -> str:
    recover_dir(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise RunDirError(f"{dest} already holds results; pass --force to overwrite them")
    data = load_fas(config.data, config.depth_size)
    result = evaluate_fas(load_model(run.model, device), data, config, progress=progress)
    title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
    with replace_dir(dest) as staged:
        return write_fas_results(result, config, staged, staged / run.roc_figure.name, title)


def _test_target(run: RunDir, model: str) -> Config | FasConfig:
    weights = run.weights(model)
    if not weights.is_file():
        methods = [m.name for m in METHODS.values() if any(n.name == model for n in m.networks)]
        raise RunDirError(
            f"{run.root} has no {weights.name}: only {', '.join(methods)} runs train a "
            f"{model} network"
        )
    return load_run_config(run)


def run_title(config: Config, model: str = MAIN) -> str:
    d = config.data
    classes = f"known classes {','.join(map(str, d.known))}" if d.known else f"split {d.split}"
    method = config.method if model == MAIN else f"{config.method} {model} network"
    unknown = f", unknowns from {unknown_source_name(d)}" if d.unknown else ""
    return f"{method} on {source_name(d)} {classes}{unknown}"


# What must not change between training and testing: the images and their format.
_SAME_SOURCE_KEYS = ("classes", "image_size", "channels", "files_sha256", "mean", "std")


def check_same_source(run: RunDir, data: OpenSetData) -> None:
    """Refuse to test a run on images other than it was trained on (an image folder whose
    classes, files or format changed since training; recorded in ``data.json``)."""
    if not run.data_record.is_file():
        return  # trained before data.json existed
    recorded = json.loads(run.data_record.read_text())
    for key in _SAME_SOURCE_KEYS:
        if recorded.get(key) != data.source.get(key):
            raise DataError(
                f"{data.source.get('path', data.name)} is not the data {run.root} was trained "
                f"on: its {key} changed since training ({run.data_record} records "
                f"{recorded.get(key)!r}, now {data.source.get(key)!r})"
            )


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
        if isinstance(config, FasConfig):
            raise ConfigError("osad check applies to open-set runs, not face anti-spoofing")
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
