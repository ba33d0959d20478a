"""The open-set task (``task: openset``, the default): OSDN and its baselines, trained
by :func:`osad.train.train` and evaluated by the open-set protocol
(:mod:`osad.eval.protocol`), incrementally: see :meth:`OpenSetTask.test`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from osad.checkpoint import first_difference, load_state_checked, read_weights
from osad.config import (
    Config,
    ConfigSource,
    check_perf_device,
    make_config,
    resolved_dict,
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
from osad.distributed import agree, rank0_first
from osad.errors import CheckpointError, DataError
from osad.eval import evaluate, write_results
from osad.eval.any_model import data_counts, data_source
from osad.eval.figures import write_figures
from osad.eval.options import select_evaluation
from osad.eval.protocol import EvalResult, condition_settings
from osad.eval.report import read_conditions, results_table
from osad.eval.results import read_metrics
from osad.eval.settings import check_evaluation_overrides, reusable
from osad.perf import prepare_model
from osad.rundir import MAIN, RunDir
from osad.runtime import deterministic_mode, resolve_device
from osad.storage import replace_dir, sha256_file, tensors_sha256
from osad.tasks.request import EvaluationRequest
from osad.train import TrainResult, build_model_for, train
from osad.train.checkpoints import resume_point
from osad.train.factory import check_training
from osad.train.parallel import check_parallel_support


class OpenSetTask:
    """The adapter :mod:`osad.workflow` runs for ``task: openset`` (see
    :class:`osad.tasks.Task`)."""

    name = "openset"
    title = "open-set"
    schema = Config
    supports_resume = True
    supports_processes = True
    supports_check = True
    verifies_data = True

    def make_config(self, file: ConfigSource, overrides: Sequence[str]) -> Config:
        return make_config(file, overrides)

    def prepare_training(self, config: Config) -> None:
        check_parallel_support(config)
        # Refuse CUDA-only switches before anything is written.
        check_perf_device(config.perf, str(resolve_device(config.device)))
        # Folders by absolute path: osad test may run from another directory.
        if config.data.name == FOLDER:
            config.data.root = str(folder_root(config.data))
        if is_folder_path(config.data.unknown):
            config.data.unknown = str(Path(config.data.unknown).expanduser().resolve())

    def load_data(self, config: Config) -> OpenSetData:
        return load_openset(config.data)

    def check_training(self, config: Config, data: OpenSetData, device: torch.device) -> None:
        check_training(config, data, device)

    def data_record(self, data: OpenSetData) -> dict[str, Any]:
        return data.source

    def train(
        self,
        config: Config,
        data: OpenSetData,
        run: RunDir,
        progress: bool,
        resume_from: Path | None = None,
    ) -> TrainResult:
        return train(config, data, run=run, progress=progress, resume_from=resume_from)

    def resume_point(self, run: RunDir, config: Config, checkpoint: Path | None) -> Path:
        checkpoint = resume_point(run, config.checkpoint, checkpoint)
        check_parallel_support(config)
        return checkpoint

    def data_folder(self, root: str) -> Path:
        return resolve_data_root(root)

    def test(self, run: RunDir, config: Config, request: EvaluationRequest) -> str:
        config = select_evaluation(
            evaluation_config(config, request.overrides), **request.selection
        )
        return _test_openset(run, config, request)


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


def _test_openset(run: RunDir, config: Config, request: EvaluationRequest) -> str:
    """The incremental evaluation of :func:`test_run` (its caller holds the lock)."""
    model, dest, device, progress = request.model, request.dest, request.device, request.progress
    data = rank0_first(lambda: load_openset(config.data))
    check_same_source(run, data)
    evaluated = _provenance(run, model, config, data)
    settings = json.loads(json.dumps(condition_settings(config, evaluated)))
    reused, kept = agree(lambda: reusable(dest, settings, request.force, _stored_conditions))
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


def _stored_conditions(path: Path, remedy: str) -> dict[str, Any]:
    """The conditions of an open-set metrics.json, read and checked (for :func:`reusable`)."""
    return read_metrics(path, remedy=remedy).document["conditions"]


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
    check_evaluation_overrides(overrides, Config)
    return make_config(resolved_dict(config), overrides) if overrides else config


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
