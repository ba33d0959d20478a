"""The speed switches of ``config.perf``, applied to a model and its forward passes.

* ``channels_last``: weights (and so activations) in NHWC memory order, which the
  oneDNN (CPU) and cuDNN (GPU) convolution kernels prefer. Same math.
* ``bf16``: :func:`torch.autocast` to bfloat16 on CUDA. Convolutions and matrix
  products run in bf16, losses and BatchNorm in fp32; attack gradients keep their
  sign, so PGD steps are nearly unchanged. Refused on CPU
  (:func:`osad.config.check_perf_device`).
* ``compile``: :meth:`torch.nn.Module.compile` on the encoder and decoder, in
  place, so parameter names and checkpoints are unchanged. ``cuda_graphs``
  selects the ``reduce-overhead`` mode, which replays CUDA graphs of the
  compiled code and removes per-kernel launch overhead (it helps small batches).

Measured effects are in docs/performance.md.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from osad.config import PerfConfig, check_perf_device


def prepare_model(model: nn.Module, perf: PerfConfig, device: torch.device) -> nn.Module:
    """Apply the model-side switches in place (the model already on ``device``)."""
    check_perf_device(perf, str(device))
    if perf.channels_last:
        model.to(memory_format=torch.channels_last)
    if perf.compile:
        mode = "reduce-overhead" if perf.cuda_graphs else None
        for part in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
            if part is not None:
                part.compile(mode=mode)
    return model


def autocast(perf: PerfConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The bf16 autocast context when ``perf.bf16`` (CUDA), else a no-op context."""
    if perf.bf16:
        check_perf_device(perf, str(device))
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
