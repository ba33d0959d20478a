"""Process-level settings: seeding, device selection, determinism, module modes, stop
signals."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from osad.errors import ConfigError, require, shown


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu")
    return device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule in eval mode, restoring each one's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


# cuBLAS is deterministic only with a fixed workspace (NVIDIA cuBLAS docs, "Results
# reproducibility"); torch refuses cuBLAS calls in deterministic mode without it.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """With ``enabled``: only deterministic algorithms (an op without one raises
    RuntimeError naming it), cuDNN's deterministic kernels without autotuning, and
    ``CUBLAS_WORKSPACE_CONFIG`` set if unset. The previous settings return on exit;
    without ``enabled`` nothing changes.

    ``CUBLAS_WORKSPACE_CONFIG`` takes effect only if set before CUDA's first cuBLAS
    call in the process: the CLI sets it in time; a Python session that used CUDA
    before should export it in the shell instead.
    """
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


@dataclass
class StopRequest:
    """Set by the first SIGINT or SIGTERM; the training loop stops at the next step boundary."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals(enabled: bool = True) -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into a :class:`StopRequest` instead of an abrupt exit.

    A second signal gets the previous handlers (KeyboardInterrupt, termination), so
    a user who insists stops at once. Signals can only be caught in the main
    thread; elsewhere, or without ``enabled``, the request is never set.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(s, handler)

    def handle(signum: int, frame: object) -> None:
        request.signum = signum
        restore()

    for s in STOP_SIGNALS:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        restore()


def validate_device(device: str) -> None:
    """``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N a GPU index)."""
    require(
        re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", device) is not None,
        f"'device' must be auto, cpu, cuda or cuda:N (N a GPU index), got "
        f"'{shown(device, quoted=False)}'",
    )
