"""Models, built by name from one registry.

``create_model(name, **kwargs)`` builds any registered model; the pair
``(name, kwargs)`` is saved with the weights so a run rebuilds its exact
architecture.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from osad.errors import unknown_name
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
    "create_model",
    "denoise_forms",
    "upsampling_plan",
]
