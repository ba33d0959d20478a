"""Shared fixtures: tiny configurations and a small trained digits model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from osad.config import make_config
from osad.data import load_openset
from osad.train import train

# A configuration small enough for a training run in a few seconds.
TINY = (
    "model.width=4",
    "model.latent_dim=16",
    "train.epochs=1",
    "train.attack.steps=2",
    "eval.attacks.pgd.steps=3",
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@contextlib.contextmanager
def one_torch_thread():
    """Run tiny models on one thread: with two threads on a busy machine,
    synchronisation costs more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def digits_split0():
    return load_openset(make_config().data)


@pytest.fixture(scope="session")
def plain_model(digits_split0):
    """An undefended digits classifier trained on clean images (accurate, not robust)."""
    config = make_config(
        overrides=["method=plain", "model.width=8", "model.latent_dim=32", "train.epochs=4"]
    )
    return train(config, digits_split0, progress=False).model.eval()


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for modules of tiny-tensor tests: on a busy 2-core machine,
    waiting for a second thread costs more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
