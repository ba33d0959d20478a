"""Adversarial attacks in [0, 1] pixel space."""

from __future__ import annotations

import torch
from torch import nn

from osad.attacks.engine import attack, eval_mode, model_outputs
from osad.attacks.objectives import Objective, cross_entropy
from osad.attacks.pgd import FGSM, FGSMRS, PGD, Attack


def build_attack(
    model: nn.Module,
    config,
    *,
    objective: Objective = cross_entropy,
    select: str = "best",
    generator: torch.Generator | None = None,
) -> Attack:
    """An :class:`Attack` from an :class:`~osad.config.AttackConfig` (budgets in 1/255)."""
    common = dict(
        norm=config.norm,
        objective=objective,
        select=select,
        generator=generator,
        restarts=config.restarts,
    )
    if config.name == "fgsm":
        return FGSM(model, eps=config.eps_unit, random_start=config.random_start, **common)
    if config.name == "fgsm-rs":
        return FGSMRS(model, eps=config.eps_unit, alpha=config.alpha_unit, **common)
    return PGD(
        model,
        eps=config.eps_unit,
        alpha=config.alpha_unit,
        steps=config.steps,
        random_start=config.random_start,
        **common,
    )


__all__ = [
    "FGSM",
    "FGSMRS",
    "PGD",
    "Attack",
    "Objective",
    "attack",
    "build_attack",
    "cross_entropy",
    "eval_mode",
    "model_outputs",
]
