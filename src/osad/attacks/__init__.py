"""Adversarial attacks in [0, 1] pixel space.

Gradient attacks (:class:`PGD`, :class:`FGSM`, :class:`FGSMRS`, :class:`APGD`), the
:class:`Patch` attack and the black-box :class:`Square` attack share one engine
(:mod:`osad.attacks.engine`) and one objective interface
(:mod:`osad.attacks.objectives`): any per-sample value of (logits, features,
labels), from the classifier's losses to the score of an open-set detector. See docs/attacks.md.
"""

from __future__ import annotations

import torch
from torch import nn

from osad.attacks.apgd import APGD, apgd, halve_step, step_checkpoints
from osad.attacks.base import Attack
from osad.attacks.engine import BestPoint, Oracle, attack, attack_mode, eval_mode, model_outputs
from osad.attacks.objectives import (
    DIRECTIONS,
    OBJECTIVES,
    JointObjective,
    Objective,
    ScoreObjective,
    cross_entropy,
    dlr,
    get_objective,
    joint_objective,
    margin,
    score_objective,
)
from osad.attacks.patch import Patch
from osad.attacks.pgd import FGSM, FGSMRS, PGD
from osad.attacks.registry import (
    ATTACK_SPECS,
    ATTACKS,
    TARGETS,
    AttackSpec,
    Param,
    attack_spec,
    register_attack,
    train_attack_names,
)
from osad.attacks.square import Square, square


def build_attack(
    model: nn.Module,
    config,
    *,
    objective: Objective | None = None,
    select: str = "best",
    generator: torch.Generator | None = None,
) -> Attack:
    """An :class:`Attack` from an :class:`~osad.config.AttackConfig` (budgets in 1/255),
    through the registry (:data:`~osad.attacks.registry.ATTACK_SPECS`).

    Parameters the config leaves unset take the attack's defaults. ``objective``, when
    given, replaces the config's ``loss``; ``select`` applies to the attacks that take
    it (the PGD family and the patch; APGD and Square always return the best point
    per sample).
    """
    c = config.resolved()
    spec = attack_spec(c.name)
    return spec.cls(
        model, **spec.arguments(c, objective=objective, select=select, generator=generator)
    )


__all__ = [
    "APGD",
    "ATTACKS",
    "ATTACK_SPECS",
    "DIRECTIONS",
    "FGSM",
    "FGSMRS",
    "OBJECTIVES",
    "PGD",
    "TARGETS",
    "Attack",
    "AttackSpec",
    "BestPoint",
    "JointObjective",
    "Objective",
    "Oracle",
    "Param",
    "Patch",
    "ScoreObjective",
    "Square",
    "apgd",
    "attack",
    "attack_mode",
    "attack_spec",
    "build_attack",
    "cross_entropy",
    "dlr",
    "eval_mode",
    "get_objective",
    "halve_step",
    "joint_objective",
    "margin",
    "model_outputs",
    "register_attack",
    "score_objective",
    "square",
    "step_checkpoints",
    "train_attack_names",
]
