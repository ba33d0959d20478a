"""Small helpers for the attack tests."""

from __future__ import annotations

import torch


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
