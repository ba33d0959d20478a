"""Models, built by name from one registry.

``create_model(name, **kwargs)`` builds any registered model; the pair
``(name, kwargs)`` is saved with the weights so a run rebuilds its exact
architecture.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from osad.errors import ConfigError, unknown_name
from osad.models.decoder import Decoder, upsampling_plan
from osad.models.denoise import DENOISERS, DenoiseBlock, DualAttention, denoise_forms
from osad.models.fas import FasNet
from osad.models.openset_net import Normalize, OpenSetNet
from osad.models.resnet import ENCODERS, ResNetEncoder

MODELS: dict[str, type[nn.Module]] = {
    "openset-resnet": OpenSetNet,
    "fas-net": FasNet,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` are its constructor arguments."""
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name](**kwargs)


# Bytes of float32 training state per parameter: weights, gradients, Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def parameter_count(name: str, **kwargs: Any) -> int:
    """The number of parameters of ``create_model(name, **kwargs)``, counted on the
    meta device: nothing is allocated, whatever the size."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def device_memory(device: torch.device) -> int:
    """Total memory in bytes of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(name: str, kwargs: dict[str, Any], device: torch.device, settings: str) -> int:
    """Refuse, before allocating anything, a model whose float32 training state
    (:data:`TRAINING_BYTES_PER_PARAMETER` per parameter) exceeds the memory of
    ``device``; activations come on top, so a model that passes may still not fit.

    ``settings`` names what chose the size, e.g. ``model.width=100000``; returns the
    parameter count. Raises :class:`~osad.errors.ConfigError`."""
    count = parameter_count(name, **kwargs)
    need, have = count * TRAINING_BYTES_PER_PARAMETER, device_memory(device)
    if need > have:
        raise ConfigError(
            f"{settings} give a model of {count:.3g} parameters, {need / 2**30:.3g} GiB to "
            f"train in float32 (weights, gradients, Adam moments), more than the "
            f"{have / 2**30:.3g} GiB of {device}; choose a smaller model"
        )
    return count


__all__ = [
    "DENOISERS",
    "ENCODERS",
    "MODELS",
    "Decoder",
    "DenoiseBlock",
    "DualAttention",
    "FasNet",
    "Normalize",
    "OpenSetNet",
    "ResNetEncoder",
    "check_fits",
    "create_model",
    "denoise_forms",
    "device_memory",
    "parameter_count",
    "upsampling_plan",
]
