"""Shared fixtures: tiny configurations and a small trained digits model."""

from __future__ import annotations

import contextlib
import os

# The suite runs on the CPU even where a GPU is present: device=auto would train
# there while the tests compare with CPU tensors, and CPU results are the ones
# the tests pin down. CUDA is checked by hand with benchmarks/gpu_check.sh.
# Set before any CUDA call, so this process and its subprocesses see no GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

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
    "eval.version=null",  # no ensemble: the tests of osad.eval.ensemble run it
)


# Two epochs of six steps with a checkpoint after every step: the resume tests' setting.
RESUMABLE = (
    "model.width=2",
    "model.latent_dim=8",
    "train.epochs=2",
    "train.batch_size=128",
    "train.attack.steps=1",
    "checkpoint.every_steps=1",
    "checkpoint.keep=3",
)


# An untrained OSDN-shaped network for the 8x8 gray digits, small enough to build in ms.
TINY_NET = dict(
    num_classes=6,
    in_channels=1,
    image_size=8,
    mean=[0.3],
    std=[0.4],
    arch="resnet10",
    width=2,
    latent_dim=8,
    denoise_places=[0],
    decoder=True,
    rotation_head=True,
)


def tiny_net(**changes):
    """``TINY_NET`` with ``changes``, initialised from seed 0."""
    from osad.models import create_model

    torch.manual_seed(0)
    return create_model("openset-resnet", **{**TINY_NET, **changes})


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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A run of RESUMABLE trained without interruption (the reference for resumes)."""
    from osad.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--out", str(out), "--no-progress", *RESUMABLE]) == 0
    return out
