"""Everything a training run needs to continue exactly where it stopped.

:class:`TrainState` owns the counters (epoch, batch within the epoch, global
step), the epoch's data permutation, the running sums of the epoch's metrics,
the history of finished epochs, and references to the model, the optimizer,
an optional LR scheduler and every random generator the loop draws from. It
turns all of that into the files of a checkpoint and back. A run trains one or
more named networks (``main``, the run's model, then e.g. ``peer`` of
``osdn-caml``), each with its own optimizer; none is a special case:

* ``model.safetensors`` for ``main``, ``NAME.safetensors`` for network ``NAME``
  (:meth:`osad.rundir.RunDir.weights_name`): the weights file of
  :mod:`osad.checkpoint`;
* ``state.safetensors``: optimizer tensors (named ``optimizer.*`` for ``main``,
  ``NAME_optimizer.*`` else), RNG states (torch CPU, each CUDA device, each
  owned generator), the epoch permutation, and the state of each sampler the
  loop draws batches from (``sampler.NAME.*``, e.g. the anti-spoofing trainer's
  per-domain queues);
* ``state.json``: counters, metric sums, history, optimizer hyper-parameters
  (key ``optimizer`` for ``main``, ``NAME_optimizer`` else), scheduler state,
  Python and NumPy RNG states, and the context the state is only valid in (the
  configuration, a fingerprint of the training data, the device type), which a
  resume must match.

Checkpoints written before networks had names (one network, or ``osdn-caml``'s
model and peer) have exactly these files; they wrote ``"peer_optimizer": null``
for a run without a peer, read as no such network.

No pickle anywhere: tensors in safetensors, everything else in JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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
from osad.documents import DocumentCheck, kind_of
from osad.errors import CheckpointError
from osad.rundir import MAIN, RunDir

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
    """A network a run trains: the module, its optimizer and the registry recipe that
    rebuilds it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: tuple[str, dict[str, Any]]


def optimizer_key(network: str) -> str:
    """The key of ``network``'s optimizer state in ``state.json`` and the prefix of its
    tensors in ``state.safetensors``."""
    return "optimizer" if network == MAIN else f"{network}_optimizer"


_OPTIMIZER_SUFFIX = "_optimizer"


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
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        problem = f"has an optimizer state that does not fit: {exc}"
        raise CheckpointError(f"{source} {problem}") from None


def _restore_scheduler(scheduler: Any, saved: dict[str, Any], source: str) -> None:
    """Load a saved LR scheduler state whose keys and JSON kinds of values are the
    scheduler's own (``load_state_dict`` would accept any mapping and fail later)."""
    current = json.loads(json.dumps(scheduler.state_dict()))  # as it was saved

    def kind(value: Any) -> str:  # an integer and a float are both numbers
        return "a number" if type(value) in (int, float) else kind_of(value)

    for key in sorted(set(current) | set(saved)):
        if key not in current or key not in saved or kind(saved[key]) != kind(current[key]):
            raise CheckpointError(
                f"{source}/{JSON_FILE}: 'scheduler.{key}' does not fit this run's LR scheduler"
            )
    scheduler.load_state_dict(saved)


def _check_permutation(permutation: Tensor, schedule: Schedule | None, source: str) -> None:
    """The epoch's data order must be a permutation of the training images."""
    n = schedule.images if schedule is not None else permutation.numel()
    ok = permutation.dtype == torch.int64 and permutation.shape == (n,)
    if not (ok and torch.equal(permutation.sort().values, torch.arange(n))):
        raise CheckpointError(
            f"{source}: 'epoch.permutation' must be a permutation of the {n} training images"
        )


class ResumableSampler(Protocol):
    """A batch sampler whose position a checkpoint holds beside its generator's state."""

    def state_tensors(self) -> dict[str, Tensor]:
        """The tensors that, with the generator's state, say which batches come next."""

    def restore_tensors(self, tensors: dict[str, Tensor], source: str) -> None:
        """Load what :meth:`state_tensors` gave, or raise :class:`CheckpointError`
        naming ``source`` if it does not fit."""


_SAMPLER = "sampler."


@dataclass(frozen=True)
class Schedule:
    """The run a checkpoint must fit: ``epochs`` to train, ``images`` of training data
    and ``batch_size``; bounds the counters and the permutation read back."""

    epochs: int
    images: int
    batch_size: int

    @property
    def batches(self) -> int:
        """Batches of an epoch before any short last batch is dropped (any process count)."""
        return -(-self.images // self.batch_size)


_PYTHON_RNG_WORDS = 625  # random.getstate(): 624 Mersenne Twister words and the position
_NUMPY_RNG_WORDS = 624


def check_state_document(document: Any, source: str, schedule: Schedule | None) -> dict[str, Any]:
    """``state.json`` of checkpoint ``source``, checked key by key before any is used.

    Types and ranges of every key :meth:`TrainState.restore` reads; with a
    ``schedule``, the epoch (1..epochs + 1), the batch within it and the history
    length (one record per finished epoch) must fit the run. Raises
    :class:`CheckpointError` naming the file and the key.
    """
    check = DocumentCheck(f"{source}/{JSON_FILE}", CheckpointError)
    if not isinstance(document, dict):
        raise CheckpointError(f"{check.source} must hold a JSON object, got {kind_of(document)}")
    high = {} if schedule is None else {"high": schedule.epochs + 1}
    epoch = check.field(document, "epoch", int, low=1, **high)
    finished = schedule is not None and epoch > schedule.epochs
    batches = {} if schedule is None else {"high": 0 if finished else schedule.batches}
    check.field(document, "batch", int, low=0, **batches)
    check.field(document, "step", int, low=0)
    meter = check.mapping(document.get("meter"), "meter", ("sums", "seen", "correct"))
    check.numbers(meter["sums"], "meter.sums")
    seen = check.field(meter, "seen", int, prefix="meter.", low=0)
    check.field(meter, "correct", int, prefix="meter.", low=0, high=seen)
    history = check.field(document, "history", list)
    if len(history) != epoch - 1:
        expected = f"one record per finished epoch ({epoch - 1})"
        check.fail("history", f"must hold {expected}, holds {len(history)}")
    for i, record in enumerate(history):
        check.numbers(record, f"history[{i}]", finite=False)
    named = [k for k in document if k.endswith(_OPTIMIZER_SUFFIX) and document[k] is not None]
    for key in (optimizer_key(MAIN), *named):
        saved = check.mapping(document.get(key), key, ("type", "param_groups", "state"))
        check.field(saved, "type", str, prefix=f"{key}.")
        for i, group in enumerate(check.field(saved, "param_groups", list, prefix=f"{key}.")):
            check.value(group, f"{key}.param_groups[{i}]", dict)
        for index, values in check.field(saved, "state", dict, prefix=f"{key}.").items():
            if not index.isdigit():
                check.fail(f"{key}.state", f"must be keyed by parameter index, has {index!r}")
            check.value(values, f"{key}.state.{index}", dict)
    check.field(document, "scheduler", (dict, type(None)))
    rng = check.mapping(document.get("rng"), "rng", ("python", "numpy"))
    python = check.field(rng, "python", list, prefix="rng.")
    numpy_state = check.field(rng, "numpy", list, prefix="rng.")
    if len(python) != 3 or len(numpy_state) != 5:
        check.fail("rng", "must hold the Python (3 items) and NumPy (5 items) generator states")
    words = [(python[1], "rng.python[1]", _PYTHON_RNG_WORDS, 2**32)]
    words.append((numpy_state[1], "rng.numpy[1]", _NUMPY_RNG_WORDS, 2**32))
    for value, key, length, bound in words:
        check.value(value, key, list)
        if len(value) != length:
            check.fail(key, f"must hold {length} generator words, holds {len(value)}")
        for word in value:
            check.value(word, key, int, low=0, high=bound - 1)
    check.value(python[0], "rng.python[0]", int)
    check.value(python[2], "rng.python[2]", (float, type(None)))
    check.value(numpy_state[0], "rng.numpy[0]", str)
    check.value(numpy_state[2], "rng.numpy[2]", int, low=0, high=_NUMPY_RNG_WORDS)
    check.value(numpy_state[3], "rng.numpy[3]", int, low=0, high=1)
    check.value(numpy_state[4], "rng.numpy[4]", float)
    context = check.mapping(document.get("context"), "context", ("config", "data", "device"))
    check.field(context, "config", dict, prefix="context.")
    check.field(context, "data", str, prefix="context.")
    check.field(context, "device", str, prefix="context.")
    return document


class TrainState:
    """The resumable state of one training run (see the module docstring)."""

    def __init__(
        self,
        networks: dict[str, Network],
        generators: dict[str, torch.Generator],
        *,
        context: dict[str, Any],
        scheduler: Any = None,
        complete_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        schedule: Schedule | None = None,
        samplers: dict[str, ResumableSampler] | None = None,
    ) -> None:
        """``networks``: the run's networks by name, ``main`` among them; ``scheduler``
        steps ``main``'s optimizer. ``context`` (config, data fingerprint, device type)
        must match on resume; ``complete_config`` fills a saved config with the defaults
        of keys added to osad since the checkpoint was written, so those alone do not
        block a resume; ``schedule`` bounds the counters a checkpoint may hold;
        ``samplers`` are batch samplers whose position is saved and restored too."""
        assert MAIN in networks, f"a run trains a network named {MAIN!r}"
        self.networks, self.scheduler = networks, scheduler
        self.schedule = schedule
        self.generators = generators
        self.samplers = samplers or {}
        self.context = context
        self.complete_config = complete_config
        self.epoch = 1  # the epoch in progress (1-based)
        self.batch = 0  # batches of this epoch already done
        self.step = 0  # optimisation steps done in all
        self.permutation: Tensor | None = None  # this epoch's data order, None before it
        self.meter = EpochMeter()
        self.history: list[dict[str, float]] = []

    @property
    def model(self) -> nn.Module:
        """The run's model (network ``main``)."""
        return self.networks[MAIN].model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.networks[MAIN].optimizer

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
        models = [n.model for n in self.networks.values()]
        floats = [t for m in models for t in m.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([t.isfinite().all() for t in floats]).all())

    # -- saving ----------------------------------------------------------------

    def _tensors_and_document(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        optimizers: dict[str, Any] = {}
        for name, network in self.networks.items():
            key = optimizer_key(name)
            optimizer_tensors, optimizers[key] = _optimizer_parts(network.optimizer, key)
            tensors.update(optimizer_tensors)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        for name, generator in self.generators.items():
            tensors[f"rng.generator.{name}"] = generator.get_state()
        if self.permutation is not None:
            tensors["epoch.permutation"] = self.permutation
        for name, sampler in self.samplers.items():
            for key, tensor in sampler.state_tensors().items():
                tensors[f"{_SAMPLER}{name}.{key}"] = tensor
        numpy_state = np.random.get_state()
        document = {
            "format_version": storage.FORMAT_VERSION,
            "osad_version": __version__,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "meter": asdict(self.meter),
            "history": self.history,
            **optimizers,
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
            RunDir.weights_name(name): model_file_bytes(network.model, *network.recipe)
            for name, network in self.networks.items()
        }
        files[TENSORS_FILE] = tensors_bytes(tensors, {})
        files[JSON_FILE] = json.dumps(document, allow_nan=False).encode()
        return files

    # -- restoring -------------------------------------------------------------

    def restore(self, files: dict[str, bytes], source: str) -> None:
        """Load a checkpoint's (verified) files into this state, or refuse naming why."""
        weights = {RunDir.weights_name(name): name for name in self.networks}
        missing = [name for name in (JSON_FILE, *weights, TENSORS_FILE) if name not in files]
        if missing:
            raise CheckpointError(f"{source} is incomplete: it does not list {missing[0]}")
        try:
            document = json.loads(files[JSON_FILE])
        except ValueError:
            raise CheckpointError(f"{source} has no readable {JSON_FILE}") from None
        if isinstance(document, dict):
            storage.check_format(document.get("format_version"), source, CheckpointError)
        check_state_document(document, source, self.schedule)
        main_file = RunDir.weights_name(MAIN)
        main = self.networks[MAIN]
        _load_network(main.model, main.recipe, files[main_file], f"{source}/{main_file}")
        extra = [f for f in files if f.endswith(".safetensors") and f != TENSORS_FILE]
        extra += [k for k in document if k.endswith(_OPTIMIZER_SUFFIX) and document[k] is not None]
        extra = sorted(set(extra) - set(weights) - {optimizer_key(n) for n in self.networks})
        if extra:
            raise CheckpointError(
                f"{source} holds a network this run does not train ({extra[0]}); resume "
                "with the method it was trained with"
            )
        self._check_context(document["context"], source)
        tensors, _ = parse_tensors(files[TENSORS_FILE], f"{source}/{TENSORS_FILE}")
        for file, name in weights.items():
            network, key = self.networks[name], optimizer_key(name)
            if name != MAIN:
                _load_network(network.model, network.recipe, files[file], f"{source}/{file}")
            _restore_optimizer(network.optimizer, key, document.get(key), tensors, source)
        if (document["scheduler"] is None) != (self.scheduler is None):
            raise CheckpointError(f"{source} and this run disagree on having an LR scheduler")
        if self.scheduler is not None:
            _restore_scheduler(self.scheduler, document["scheduler"], source)
        permutation = tensors.get("epoch.permutation")
        if permutation is not None:
            _check_permutation(permutation, self.schedule, f"{source}/{TENSORS_FILE}")
        for name, sampler in self.samplers.items():
            prefix = f"{_SAMPLER}{name}."
            saved = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            sampler.restore_tensors(saved, f"{source}/{TENSORS_FILE} ('{prefix}*')")
        try:
            self._restore_rng(document["rng"], tensors, source)
        except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
            where = f"'rng' of {JSON_FILE} or 'rng.*' of {TENSORS_FILE}"
            problem = f"a random generator state that cannot be restored ({str(exc)[:100]})"
            raise CheckpointError(f"{source}: {where} holds {problem}") from None
        self.epoch, self.batch, self.step = document["epoch"], document["batch"], document["step"]
        self.meter = EpochMeter(**document["meter"])
        self.history = document["history"]
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
