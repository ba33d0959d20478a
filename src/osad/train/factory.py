"""The networks a training run builds: models from the method's entry, their optimizers.

Also :func:`check_training`, everything :func:`osad.train.train` would refuse,
checked before a run directory is created.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from osad.config import Config
from osad.data import OpenSetData
from osad.distributed import sync_batchnorm, world
from osad.inputs import check_images
from osad.methods import METHODS, model_spec
from osad.models import check_fits, create_model
from osad.perf import prepare_model
from osad.rundir import MAIN
from osad.train.parallel import check_parallel_support, check_split
from osad.train.state import Network


def build_model_for(
    config: Config, data: OpenSetData, network: str = MAIN
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Network ``network`` of the method ``config`` trains on ``data`` (``main``: the
    run's model), with its registry recipe (name, kwargs)."""
    name, kwargs = _spec_for(config, data, network)
    return create_model(name, **kwargs), name, kwargs


def _spec_for(config: Config, data: OpenSetData, network: str = MAIN) -> tuple[str, dict[str, Any]]:
    return model_spec(
        config,
        data.num_classes,
        data.channels,
        data.image_size,
        data.mean,
        data.std,
        network=network,
    )


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``model``'s parameters: Nesterov SGD (momentum 0.9) or
    Adam, at ``train.lr`` with ``train.weight_decay``."""
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def build_networks(config: Config, data: OpenSetData, device: torch.device) -> dict[str, Network]:
    """Every network of ``config.method``, in its order, on ``device`` and prepared for
    ``config.perf`` (BatchNorm synchronised across processes if ``train.sync_batchnorm``),
    each with its optimizer. Models are created in that order from the global random
    state, so a seed gives the same initial weights."""
    networks = {}
    for spec in METHODS[config.method].networks:
        model, name, kwargs = build_model_for(config, data, spec.name)
        model.to(device)
        if config.train.sync_batchnorm and world().distributed:
            sync_batchnorm(model)
        prepare_model(model, config.perf, device)
        networks[spec.name] = Network(model, make_optimizer(config, model), (name, kwargs))
    return networks


def check_training(config: Config, data: OpenSetData, device: torch.device) -> None:
    """Refuse what :func:`osad.train.train` would refuse about ``config`` and ``data``
    before it starts: images out of range, a batch too small to split, several networks
    where they cannot train, and a model whose float32 training state does not fit in
    ``device``'s memory (counted without allocating, :func:`osad.models.check_fits`).
    Callers run it before creating a run directory, so that a refusal leaves nothing
    behind."""
    for part in ("train_images", "val_images"):
        images = getattr(data, part)
        if images.dtype != torch.uint8 and len(images):
            check_images(images, name=f"data.{part}")
    t = config.train
    check_parallel_support(config)
    check_split(t.batch_size, t.grad_accumulation, world().size)
    m = config.model
    settings = f"model.arch={m.arch}, model.width={m.width}, model.latent_dim={m.latent_dim}"
    check_fits(*_spec_for(config, data), device, f"the configuration ({settings})")
