"""Models, built by name from one registry (:mod:`osad.models.registry`).

``create_model(name, **kwargs)`` builds any registered model; the pair
``(name, kwargs)`` is saved with the weights so a run rebuilds its exact
architecture.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from osad.errors import ConfigError, OsadError, unknown_name
from osad.models.cnn import MadryCNN
from osad.models.decoder import Decoder, upsampling_plan
from osad.models.denoise import DENOISERS, DenoiseBlock, DualAttention, denoise_forms
from osad.models.encoders import ENCODERS, EncoderFamily, build_encoder
from osad.models.openset_net import Normalize, OpenSetNet
from osad.models.registry import MODELS, register_model
from osad.models.resnet import ResNetEncoder

# 2^30 parameters (4 GiB in float32): 40 times a ResNet-50, far above any recipe osad
# trains, far below what would exhaust a machine's memory before the error.
MAX_PARAMETERS = 2**30


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` are its constructor arguments."""
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name](**kwargs)


def check_recipe(
    name: Any, kwargs: Any, source: str = "model recipe", error: type[OsadError] = ConfigError
) -> int:
    """Refuse a recipe ``(name, kwargs)`` that cannot build a model, before anything is
    allocated: an unknown model or keyword, a value the constructor rejects, or more
    than :data:`MAX_PARAMETERS` parameters (counted on the meta device, no memory
    used). Raises ``error`` starting with ``source``; returns the parameter count
    (buffers included)."""
    if not isinstance(name, str) or name not in MODELS:
        raise error(f"{source}: {unknown_name('model', str(name)[:50], MODELS)}")
    if not isinstance(kwargs, dict):
        raise error(f"{source}: the model's arguments must be a JSON object")
    try:
        inspect.signature(MODELS[name]).bind(**kwargs)
        with torch.device("meta"):
            model = MODELS[name](**kwargs)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OsadError) as exc:
        raise error(f"{source} cannot build {name}: {str(exc)[:200]}") from None
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if count > MAX_PARAMETERS:
        raise error(
            f"{source} describes a model {name!r} of {count:.3g} parameters, over the limit of "
            f"{MAX_PARAMETERS:.3g} (model.width or another size too large?)"
        )
    return count


# Bytes of float32 training state per parameter: weights, gradients, Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def device_memory(device: torch.device) -> int:
    """Total memory in bytes of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(name: str, kwargs: dict[str, Any], device: torch.device, source: str) -> int:
    """:func:`check_recipe`, and refuse a model whose float32 training state
    (:data:`TRAINING_BYTES_PER_PARAMETER` per parameter) exceeds the memory of
    ``device``, before anything is allocated; activations come on top, so a model
    that passes may still not fit. ``source`` names what chose the size, e.g.
    ``the configuration (model.width=100000)``. Raises
    :class:`~osad.errors.ConfigError`; returns the parameter count."""
    count = check_recipe(name, kwargs, source)
    need, have = count * TRAINING_BYTES_PER_PARAMETER, device_memory(device)
    if need > have:
        raise ConfigError(
            f"{source} describes a model of {count:.3g} parameters, {need / 2**30:.3g} GiB "
            f"to train in float32 (weights, gradients, Adam moments), more than the "
            f"{have / 2**30:.3g} GiB of {device}; choose a smaller model"
        )
    return count


__all__ = [
    "DENOISERS",
    "ENCODERS",
    "MAX_PARAMETERS",
    "MODELS",
    "Decoder",
    "DenoiseBlock",
    "DualAttention",
    "EncoderFamily",
    "MadryCNN",
    "Normalize",
    "OpenSetNet",
    "ResNetEncoder",
    "build_encoder",
    "check_fits",
    "check_recipe",
    "create_model",
    "denoise_forms",
    "device_memory",
    "register_model",
    "upsampling_plan",
]
