"""The speed switches of ``config.perf``: same results, refused where they cannot run."""

from __future__ import annotations

import pytest
import torch

from osad.config import PerfConfig, make_config
from osad.errors import ConfigError
from osad.methods import model_spec
from osad.models import create_model
from osad.perf import autocast, prepare_model
from osad.train import train
from tests.conftest import TINY

CPU = torch.device("cpu")


def _net():
    config = make_config(overrides=list(TINY))
    name, kwargs = model_spec(config, 6, 1, 8, (0.3,), (0.4,))
    return create_model(name, **kwargs).eval()


def test_channels_last_gives_the_same_outputs_and_input_gradients():
    model, x = _net(), torch.rand(4, 1, 8, 8, requires_grad=True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    prepare_model(model, PerfConfig(channels_last=True), CPU)
    assert model.encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    logits_cl = model(x)
    (grad_cl,) = torch.autograd.grad(logits_cl.sum(), x)
    assert torch.allclose(logits, logits_cl, atol=1e-5)
    assert torch.allclose(grad, grad_cl, atol=1e-5)


def test_compile_wraps_encoder_and_decoder_in_place(monkeypatch):
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((fn.__self__, kwargs.get("mode")))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, x = _net(), torch.rand(2, 1, 8, 8)
    keys, expected = list(model.state_dict()), model(x)
    prepare_model(model, PerfConfig(compile=True), CPU)
    assert [(m, mode) for m, mode in compiled] == [(model.encoder, None), (model.decoder, None)]
    assert list(model.state_dict()) == keys  # checkpoints keep their parameter names
    assert torch.equal(model(x), expected)


def test_cuda_only_switches_are_refused_on_cpu():
    with pytest.raises(ConfigError, match=r"'perf\.bf16' needs a CUDA device"):
        prepare_model(_net(), PerfConfig(bf16=True), CPU)
    with pytest.raises(ConfigError, match=r"'perf\.bf16' needs a CUDA device"):
        autocast(PerfConfig(bf16=True), CPU)
    with autocast(PerfConfig(), CPU):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_training_with_channels_last_matches_the_default_layout(digits_split0):
    histories = []
    for layout in ("false", "true"):
        config = make_config(
            overrides=[*TINY, f"perf.channels_last={layout}", "train.fused_branches=false"]
        )
        result = train(config, digits_split0, progress=False)
        histories.append(result.history[-1])
    assert result.model.encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    default, channels_last = histories
    # Rounding differs between layouts, and PGD's sign steps amplify it over an epoch
    # (0.4% measured); a wrong layout would give an unrelated loss.
    assert channels_last["train_loss"] == pytest.approx(default["train_loss"], rel=0.02)
