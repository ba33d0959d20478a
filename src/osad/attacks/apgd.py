"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", https://arxiv.org/abs/2003.01690).

APGD is PGD without a step size to tune. With ``P`` the projection onto the
eps-ball and the [0, 1] box, ``s`` the steepest-ascent direction of the norm and
``f`` the objective, starting from ``x0`` with ``eta = 2 eps``::

    x1      = P(x0 + eta s(grad f(x0)))
    z       = P(x_k + eta_k s(grad f(x_k)))
    x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))        a = 0.75

At the checkpoints ``w_j = ceil(p_j N)`` (``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) the step size of a sample
is halved, and the sample restarts from its best point so far, when

1. fewer than ``rho = 0.75`` of the steps since the last checkpoint increased
   ``f``, or
2. its step size was not halved at the last checkpoint and its best value has
   not improved since then.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from osad.attacks.base import Attack
from osad.attacks.engine import (
    BestPoint,
    Oracle,
    attack_mode,
    check_attack_inputs,
    check_budget,
    per_sample,
    project,
    random_init,
    resolve_labels,
    steepest_ascent,
)
from osad.attacks.objectives import Objective, cross_entropy
from osad.attacks.registry import Param, register_attack
from osad.inputs import inputs_checked

MOMENTUM = 0.75
RHO = 0.75


def step_checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)``, ``j >= 1``, at which APGD may halve its step.

    ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: the
    intervals start at 22% of the budget and shrink by 3% down to 6%.
    """
    previous, fraction = 0.0, 0.22
    points: set[int] = set()
    while fraction <= 1.0:
        # Rounding drops float noise such as 0.41 * 100 = 41.000000000000004.
        points.add(math.ceil(round(fraction * steps, 9)))
        previous, fraction = fraction, round(fraction + max(fraction - previous - 0.03, 0.06), 9)
    return sorted(p for p in points if p > 0)


def halve_step(
    increases: Tensor,
    interval: int,
    halved_before: Tensor,
    best: Tensor,
    best_before: Tensor,
    rho: float = RHO,
) -> Tensor:
    """Where APGD halves the step at a checkpoint (per sample, boolean).

    Args:
        increases: how many of the ``interval`` steps since the last checkpoint
            increased the objective.
        halved_before: whether the step was halved at the last checkpoint.
        best, best_before: the best objective now and at the last checkpoint.
    """
    oscillating = increases < rho * interval
    stalled = ~halved_before & (best <= best_before)
    return oscillating | stalled


def _ascend(
    oracle: Oracle,
    x: Tensor,
    delta: Tensor,
    *,
    eps: float,
    steps: int,
    norm: str,
    best: BestPoint,
) -> None:
    """One APGD run from ``x + delta``, offering every iterate to ``best``."""
    checkpoints = set(step_checkpoints(steps))
    evaluation, grad = oracle.with_gradient(x + delta)
    best.offer(x + delta, evaluation)
    value = evaluation.value
    eta = torch.full_like(value, 2 * eps)
    run_best_delta, run_best_value, run_best_grad = delta, value, grad
    previous = delta
    increases = torch.zeros_like(value)
    halved = torch.zeros_like(value, dtype=torch.bool)
    best_at_checkpoint = value
    last_checkpoint = 0
    for k in range(steps):
        z = project(delta + per_sample(eta, x) * steepest_ascent(grad, norm), x, eps, norm)
        if k > 0:
            z = project(
                delta + MOMENTUM * (z - delta) + (1 - MOMENTUM) * (delta - previous), x, eps, norm
            )
        previous, delta = delta, z
        if k == steps - 1:
            best.offer(x + delta, oracle(x + delta))
            break
        evaluation, grad = oracle.with_gradient(x + delta)
        best.offer(x + delta, evaluation)
        increases += evaluation.value > value
        value = evaluation.value
        improved = value > run_best_value
        run_best_value = torch.where(improved, value, run_best_value)
        run_best_delta = torch.where(per_sample(improved, x), delta, run_best_delta)
        run_best_grad = torch.where(per_sample(improved, x), grad, run_best_grad)
        if k + 1 in checkpoints:
            halve = halve_step(
                increases, k + 1 - last_checkpoint, halved, run_best_value, best_at_checkpoint
            )
            eta = torch.where(halve, eta / 2, eta)
            restart = per_sample(halve, x)
            delta = torch.where(restart, run_best_delta, delta)
            grad = torch.where(restart, run_best_grad, grad)
            value = torch.where(halve, run_best_value, value)
            halved, best_at_checkpoint = halve, run_best_value
            increases = torch.zeros_like(value)
            last_checkpoint = k + 1


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    objective: Objective = cross_entropy,
    eps: float,
    steps: int = 100,
    norm: str = "linf",
    restarts: int = 1,
    random_start: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD of ``objective`` within an ``eps``-ball around ``x`` (see the module docstring).

    Args are those of :func:`osad.attacks.engine.attack` without ``alpha`` (the
    step size adapts) and ``select`` (APGD returns the best point per sample over
    all iterates and restarts). Each run costs ``steps`` gradient evaluations and
    one forward pass.
    """
    check_budget(eps, norm, restarts, steps=steps)
    check_attack_inputs(x, y, objective)
    x = x.detach()
    with attack_mode(model, gradients=True), inputs_checked():
        oracle = Oracle(model, objective, resolve_labels(model, x, y), targeted)
        best = BestPoint(x)
        for _ in range(restarts):
            delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
            _ascend(oracle, x, delta, eps=eps, steps=steps, norm=norm, best=best)
    return best.images.detach().to(x.dtype)


@register_attack(
    "apgd",
    "Auto-PGD: momentum and a self-adapting step size (Croce & Hein 2020)",
    params={
        "steps": Param(100, "gradient steps per restart", at_least=1, caption="{} steps"),
        "random_start": Param(True, "start uniformly in the eps-ball, else at the image"),
    },
)
class APGD(Attack):
    """Auto-PGD (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690): PGD with
    momentum 0.75 and a step size that starts at ``2 eps`` and halves at checkpoints
    where progress stalls, restarting from the best point; nothing to tune.

    Args:
        model: maps images in [0, 1] to logits (normalisation inside the model).
        eps: budget in [0, 1] units (default 8/255).
        steps: gradient steps per restart (default 100).
        norm: ``"linf"`` (default) or ``"l2"``.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``; ignored when ``objective``
            is given. APGD-CE and APGD-DLR are the first two attacks of AutoAttack.
        restarts: random starts; the best point per sample is kept (default 1).
        random_start: start uniformly in the ball, else at ``x`` (default True).
        objective: any per-sample objective (e.g. :func:`score_objective`), instead
            of ``loss``.
        generator: random source for the starts.

    Example::

        >>> x_adv = APGD(model, eps=8/255, steps=100, loss="dlr")(images, labels)
    """

    caption_names_loss = True

    @classmethod
    def caption(cls, config: Any) -> str:
        # A score attack has no classification loss, so its APGD carries no loss name.
        name = "APGD" if config.target == "score" else f"APGD-{config.loss.upper()}"
        return f"{name} {config.norm} eps {config.eps:g}/255"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 100,
        norm: str = "linf",
        loss: str = "ce",
        restarts: int = 1,
        *,
        random_start: bool = True,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model, eps, norm, restarts, loss, objective, generator)
        check_budget(eps, norm, restarts, steps=steps)
        self.steps, self.random_start = steps, random_start

    def perturb(self, x: Tensor, y: Tensor | None, *, targeted: bool) -> Tensor:
        return apgd(
            self.model,
            x,
            y,
            steps=self.steps,
            random_start=self.random_start,
            targeted=targeted,
            **self.shared_arguments(),
        )

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps}
