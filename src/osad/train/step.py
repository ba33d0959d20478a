"""What every trainer shares: a checked optimiser step and the result of training.

Low on purpose (it imports nothing from attacks, openset, distributed, eval or the
rest of train), so
that the open-set loop and the anti-spoofing trainer both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from osad.errors import OsadError
from osad.rundir import MAIN


class NonFiniteLossError(OsadError):
    """Training produced a NaN or infinite loss (or weights)."""


def check_finite(value: float, where: str) -> None:
    """Stop training, naming ``where``, when the loss ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training stopped: non-finite loss ({value}) at {where}")


def take_step(optimizer: torch.optim.Optimizer, loss: Tensor, where: str) -> float:
    """One optimiser step on ``loss``, returning its value; a NaN or infinite loss
    stops training, naming ``where``."""
    value = loss.item()
    check_finite(value, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


@dataclass
class TrainResult:
    """A trained network (in eval mode) with the registry recipe that rebuilds it
    (``model_name``, ``model_kwargs``), the per-epoch ``history``, and the run's
    ``others``: its further networks by name (``peer`` of osdn-caml), each a
    :class:`TrainResult` without history."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    others: dict[str, TrainResult] = field(default_factory=dict)

    def networks(self) -> dict[str, TrainResult]:
        """Every network of the run by name, :data:`MAIN` first."""
        return {MAIN: self, **self.others}
