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
from osad.attacks.square import Square, square

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgsm-rs": FGSMRS,
    "pgd": PGD,
    "apgd": APGD,
    "square": Square,
    "patch": Patch,
}


def build_attack(
    model: nn.Module,
    config,
    *,
    objective: Objective | None = None,
    select: str = "best",
    generator: torch.Generator | None = None,
) -> Attack:
    """An :class:`Attack` from an :class:`~osad.config.AttackConfig` (budgets in 1/255).

    Keys the config leaves unset take the attack's defaults. ``objective``, when
    given, replaces the config's ``loss``; ``select`` applies to the PGD family
    (APGD and Square always return the best point per sample).
    """
    c = config.resolved()
    common = dict(restarts=c.restarts, loss=c.loss, objective=objective, generator=generator)
    if c.name == "patch":  # always linf: the patch's budget is the whole pixel range
        return Patch(
            model,
            size=c.patch_size,
            alpha=c.alpha_unit,
            steps=c.steps,
            candidates=c.candidates,
            random_start=c.random_start,
            select=select,
            **common,
        )
    common["norm"] = c.norm
    if c.name == "square":
        return Square(model, eps=c.eps_unit, queries=c.queries, p_init=c.p_init, **common)
    if c.name == "apgd":
        return APGD(model, eps=c.eps_unit, steps=c.steps, random_start=c.random_start, **common)
    if c.name == "fgsm":
        return FGSM(model, eps=c.eps_unit, random_start=c.random_start, select=select, **common)
    if c.name == "fgsm-rs":
        return FGSMRS(model, eps=c.eps_unit, alpha=c.alpha_unit, select=select, **common)
    return PGD(
        model,
        eps=c.eps_unit,
        alpha=c.alpha_unit,
        steps=c.steps,
        random_start=c.random_start,
        select=select,
        **common,
    )


__all__ = [
    "APGD",
    "ATTACKS",
    "DIRECTIONS",
    "FGSM",
    "FGSMRS",
    "OBJECTIVES",
    "PGD",
    "Attack",
    "BestPoint",
    "JointObjective",
    "Objective",
    "Oracle",
    "Patch",
    "ScoreObjective",
    "Square",
    "apgd",
    "attack",
    "attack_mode",
    "build_attack",
    "cross_entropy",
    "dlr",
    "eval_mode",
    "get_objective",
    "halve_step",
    "joint_objective",
    "margin",
    "model_outputs",
    "score_objective",
    "square",
    "step_checkpoints",
]
