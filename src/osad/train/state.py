"""Everything a training run needs to continue exactly where it stopped.

:class:`TrainState` owns the counters (epoch, batch within the epoch, global
step), the epoch's data permutation, the running sums of the epoch's metrics,
the history of finished epochs, and references to the model, the optimizer,
an optional LR scheduler and every random generator the loop draws from. It
turns all of that into the files of a checkpoint and back:

* ``model.safetensors``: the weights file of :mod:`osad.checkpoint`;
* ``peer.safetensors``: the same for the peer network of mutual learning
  (``osdn-caml`` runs only);
* ``state.safetensors``: optimizer tensors (the peer's optimizer too), RNG
  states (torch CPU, each CUDA device, each owned generator) and the epoch
  permutation;
* ``state.json``: counters, metric sums, history, optimizer hyper-parameters,
  scheduler state, Python and NumPy RNG states, and the context the state is
  only valid in (the configuration, a fingerprint of the training data, the
  device type), which a resume must match.

No pickle anywhere: tensors in safetensors, everything else in JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from osad import __version__, storage
from osad.checkpoint import (
    first_difference,
    load_state_checked,
    parse_tensors,
    parse_weights,
    tensors_bytes,
)
from osad.checkpoint import weights_bytes as model_file_bytes
from osad.data import OpenSetData
from osad.errors import CheckpointError

MODEL_FILE = "model.safetensors"
PEER_FILE = "peer.safetensors"
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"


@dataclass
class EpochMeter:
    """Sample-weighted sums of the step losses and the training accuracy of one epoch."""

    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    correct: int = 0

    def add(self, terms: dict[str, float], batch: int, correct: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * batch
        self.seen += batch
        self.correct += correct

    def means(self) -> dict[str, float]:
        out = {f"train_{k}": v / self.seen for k, v in self.sums.items()}
        out["train_accuracy"] = self.correct / self.seen
        return out


def data_fingerprint(data: OpenSetData) -> str:
    """sha256 of the training and validation tensors: a resume must see the same data."""
    return storage.tensors_sha256(
        (data.train_images, data.train_labels, data.val_images, data.val_labels)
    )


@dataclass
class Network:
    """A network trained alongside the model (the peer of mutual learning): the
    module, its optimizer and the registry recipe that rebuilds it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: tuple[str, dict[str, Any]]


def _optimizer_parts(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The optimizer's tensors (named ``prefix.index.key``) and the rest, for JSON."""
    saved = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for index, values in saved["state"].items():
        state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                state[str(index)][key] = value
    document = {
        "type": type(optimizer).__name__,
        "param_groups": saved["param_groups"],
        "state": state,
    }
    return tensors, document


def _load_network(
    model: nn.Module, recipe: tuple[str, dict[str, Any]], data: bytes, source: str
) -> None:
    """Load a checkpoint's weights file into ``model``, whose recipe must be the saved one."""
    weights, (name, kwargs) = parse_weights(data, source)
    load_state_checked(model, weights, source)
    difference = first_difference({"model": name, **kwargs}, {"model": recipe[0], **recipe[1]})
    if difference:
        key, saved_value, value = difference
        raise CheckpointError(
            f"{source} holds another model: {key}={saved_value!r}, this run has {value!r}"
        )


def _like(template: Any, value: Any) -> Any:
    """``value`` from JSON with the tuple-ness of ``template`` restored (Adam's betas)."""
    return tuple(value) if isinstance(template, tuple) else value


def _restore_optimizer(
    optimizer: torch.optim.Optimizer,
    prefix: str,
    saved: dict[str, Any] | None,
    tensors: dict[str, Tensor],
    source: str,
) -> None:
    """Load the state saved by :func:`_optimizer_parts` (tensors named ``prefix.*``)."""
    if saved is None:
        raise CheckpointError(f"{source} has no state for the {prefix.replace('_', ' ')}")
    if saved["type"] != type(optimizer).__name__:
        raise CheckpointError(
            f"{source} holds a {saved['type']} optimizer, this run uses {type(optimizer).__name__}"
        )
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in saved["state"].items()}
    for key, tensor in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == prefix:
            index, _, name = rest.partition(".")
            state.setdefault(int(index), {})[name] = tensor
    templates = optimizer.state_dict()["param_groups"]
    if len(templates) != len(saved["param_groups"]):
        raise CheckpointError(f"{source} has another number of optimizer parameter groups")
    groups = [
        {k: _like(template.get(k), v) for k, v in group.items()}
        for template, group in zip(templates, saved["param_groups"], strict=True)
    ]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        problem = f"has an optimizer state that does not fit: {exc}"
        raise CheckpointError(f"{source} {problem}") from None


class TrainState:
    """The resumable state of one training run (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        *,
        recipe: tuple[str, dict[str, Any]],
        context: dict[str, Any],
        scheduler: Any = None,
        peer: Network | None = None,
        complete_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``context`` (config, data fingerprint, device type) must match on resume;
        ``complete_config`` fills a saved config with the defaults of keys added to
        osad since the checkpoint was written, so those alone do not block a resume."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.peer = peer
        self.generators = generators
        self.recipe = recipe
        self.context = context
        self.complete_config = complete_config
        self.epoch = 1  # the epoch in progress (1-based)
        self.batch = 0  # batches of this epoch already done
        self.step = 0  # optimisation steps done in all
        self.permutation: Tensor | None = None  # this epoch's data order, None before it
        self.meter = EpochMeter()
        self.history: list[dict[str, float]] = []

    # -- progress --------------------------------------------------------------

    def finish_step(self, terms: dict[str, float], batch: int, correct: int) -> None:
        self.meter.add(terms, batch, correct)
        self.batch += 1
        self.step += 1

    def finish_epoch(self, record: dict[str, float]) -> None:
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.permutation = None
        self.meter = EpochMeter()

    def weights_finite(self) -> bool:
        models = [self.model] + ([self.peer.model] if self.peer is not None else [])
        floats = [t for m in models for t in m.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([t.isfinite().all() for t in floats]).all())

    # -- saving ----------------------------------------------------------------

    def _tensors_and_document(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        optimizer_tensors, optimizer = _optimizer_parts(self.optimizer, "optimizer")
        tensors.update(optimizer_tensors)
        peer_optimizer = None
        if self.peer is not None:
            peer_tensors, peer_optimizer = _optimizer_parts(self.peer.optimizer, "peer_optimizer")
            tensors.update(peer_tensors)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        for name, generator in self.generators.items():
            tensors[f"rng.generator.{name}"] = generator.get_state()
        if self.permutation is not None:
            tensors["epoch.permutation"] = self.permutation
        numpy_state = np.random.get_state()
        document = {
            "format_version": storage.FORMAT_VERSION,
            "osad_version": __version__,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "meter": asdict(self.meter),
            "history": self.history,
            "optimizer": optimizer,
            "peer_optimizer": peer_optimizer,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            },
            "context": self.context,
        }
        return tensors, document

    def files(self) -> dict[str, bytes]:
        """The files of a checkpoint of this state."""
        tensors, document = self._tensors_and_document()
        files = {
            MODEL_FILE: model_file_bytes(self.model, *self.recipe),
            TENSORS_FILE: tensors_bytes(tensors, {}),
            JSON_FILE: json.dumps(document, allow_nan=False).encode(),
        }
        if self.peer is not None:
            files[PEER_FILE] = model_file_bytes(self.peer.model, *self.peer.recipe)
        return files

    # -- restoring -------------------------------------------------------------

    def restore(self, files: dict[str, bytes], source: str) -> None:
        """Load a checkpoint's (verified) files into this state, or refuse naming why."""
        try:
            document = json.loads(files[JSON_FILE])
        except (KeyError, ValueError):
            raise CheckpointError(f"{source} has no readable {JSON_FILE}") from None
        storage.check_format(document.get("format_version"), source, CheckpointError)
        _load_network(self.model, self.recipe, files[MODEL_FILE], f"{source}/{MODEL_FILE}")
        if (PEER_FILE in files) != (self.peer is not None):
            has = "holds" if PEER_FILE in files else "has no"
            raise CheckpointError(
                f"{source} {has} a peer network ({PEER_FILE}) and this run does not agree"
            )
        self._check_context(document["context"], source)
        tensors, _ = parse_tensors(files[TENSORS_FILE], f"{source}/{TENSORS_FILE}")
        _restore_optimizer(self.optimizer, "optimizer", document["optimizer"], tensors, source)
        if self.peer is not None:
            peer = self.peer
            _load_network(peer.model, peer.recipe, files[PEER_FILE], f"{source}/{PEER_FILE}")
            saved = document.get("peer_optimizer")
            _restore_optimizer(peer.optimizer, "peer_optimizer", saved, tensors, source)
        if (document["scheduler"] is None) != (self.scheduler is None):
            raise CheckpointError(f"{source} and this run disagree on having an LR scheduler")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(document["scheduler"])
        self._restore_rng(document["rng"], tensors, source)
        self.epoch, self.batch, self.step = document["epoch"], document["batch"], document["step"]
        self.meter = EpochMeter(**document["meter"])
        self.history = document["history"]
        permutation = tensors.get("epoch.permutation")
        device = next(self.model.parameters()).device
        self.permutation = None if permutation is None else permutation.to(device)

    def _check_context(self, saved: dict[str, Any], source: str) -> None:
        if saved.get("device") != self.context["device"]:
            raise CheckpointError(
                f"{source} was written on {saved.get('device')}, this run uses "
                f"{self.context['device']}: its random states only continue on the same kind "
                f"of device (set device={saved.get('device')})"
            )
        saved_config = saved.get("config", {})
        if self.complete_config is not None:
            saved_config = self.complete_config(saved_config)
        difference = first_difference(saved_config, self.context["config"])
        if difference:
            key, saved_value, value = difference
            raise CheckpointError(
                f"{source} was written with {key}={saved_value!r}, the run's config.yaml now "
                f"has {value!r}; resume with the configuration it was trained with"
            )
        if saved.get("data") != self.context["data"]:
            raise CheckpointError(
                f"{source} was trained on other data: the training images or labels "
                "changed since (dataset files replaced?)"
            )

    def _restore_rng(self, saved: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
        version, internal, gauss = saved["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, *rest = saved["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(tensors["rng.torch"])
        cuda_keys = [k for k in tensors if k.startswith("rng.cuda.")]
        cuda_states = [tensors[k] for k in sorted(cuda_keys, key=lambda k: int(k.split(".")[-1]))]
        if cuda_states and torch.cuda.is_available():
            for i, state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, i)
        for name, generator in self.generators.items():
            key = f"rng.generator.{name}"
            if key not in tensors:
                raise CheckpointError(f"{source} has no state for the '{name}' random generator")
            generator.set_state(tensors[key])
