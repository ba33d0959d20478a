"""Models, built by name from one registry.

``create_model(name, **kwargs)`` builds any registered model; the pair
``(name, kwargs)`` is saved with the weights so a run rebuilds its exact
architecture.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from osad.errors import ConfigError, OsadError, unknown_name
from osad.models.decoder import Decoder, upsampling_plan
from osad.models.denoise import DENOISERS, DenoiseBlock, DualAttention, denoise_forms
from osad.models.fas import FasNet
from osad.models.openset_net import Normalize, OpenSetNet
from osad.models.resnet import ENCODERS, ResNetEncoder

MODELS: dict[str, type[nn.Module]] = {
    "openset-resnet": OpenSetNet,
    "fas-net": FasNet,
}


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
) -> None:
    """Refuse a recipe ``(name, kwargs)`` that cannot build a model, before anything is
    allocated: an unknown model or keyword, a value the constructor rejects, or more
    than :data:`MAX_PARAMETERS` parameters (counted on the meta device, no memory
    used). Raises ``error`` starting with ``source``."""
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


__all__ = [
    "DENOISERS",
    "ENCODERS",
    "MAX_PARAMETERS",
    "MODELS",
    "Decoder",
    "DenoiseBlock",
    "DualAttention",
    "FasNet",
    "Normalize",
    "OpenSetNet",
    "ResNetEncoder",
    "check_recipe",
    "create_model",
    "denoise_forms",
    "upsampling_plan",
]
