"""The benchmarks run on the current API: two of them went on using attack fields the
configuration no longer had until they were run by hand, since no test imported
them. Every script must import, and the training-step benchmark's own algorithm
check (osad's step against a naive one, in float64) must hold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "common")  # common: helpers


def load(name: str):
    """The benchmark script ``name`` as a module (its ``main`` is not run)."""
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared helpers
    try:
        spec = importlib.util.spec_from_file_location(
            f"osad_benchmark_{name}", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_imports(name):
    assert callable(load(name).main)


@pytest.mark.slow
def test_the_training_step_benchmark_compares_one_algorithm(capsys):
    bench = load("train_step")
    torch.manual_seed(0)
    model = bench.paper_model().double()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.randint(0, 6, (2,))
    bench.check_same_results(model, images, labels)  # SystemExit if the steps disagree
    assert "same loss and gradients: yes" in capsys.readouterr().out


def test_the_model_family_benchmark_runs_the_sweeps_settings():
    """benchmarks/mnist_family.py compares the families on the mnist sweep's training
    and PGD-10; its quick run takes over 10 s, so this checks the configurations it
    builds (a renamed attack or model field of the sweep breaks it here)."""
    bench = load("mnist_family")
    resnet = bench.run_config("pgd-at", "resnet18-w8", 0, None)
    cnn = bench.run_config("osdn", "madry-cnn", 0, 3)
    assert (resnet.model.arch, resnet.model.width, resnet.model.latent_dim) == ("resnet18", 8, 64)
    assert (cnn.model.arch, cnn.model.width, cnn.model.denoise_places) == ("madry-cnn", 32, [1, 2])
    assert (resnet.method, cnn.method, cnn.train.epochs, resnet.train.epochs) == (
        "pgd-at",
        "osdn",
        3,
        5,
    )
    for config in (resnet, cnn):
        attack = config.train.attack.resolved()
        assert (attack.eps, attack.params["steps"], attack.params["alpha"]) == (76.5, 5, 19.125)
        (test,) = config.eval.attacks.values()
        assert (test.eps, test.params["steps"]) == (76.5, 10)
        assert config.eval.scores == ["msp"]
