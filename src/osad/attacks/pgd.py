"""PGD, FGSM and FGSM-RS: thin front-ends over :func:`osad.attacks.engine.attack`.

Usage::

    atk = PGD(model, eps=8/255, alpha=2/255, steps=10)
    x_adv = atk(x, y)            # y=None attacks the model's own prediction

Images must be float in [0, 1]; budgets are in the same units. Bad images,
labels or budgets raise :class:`~osad.errors.InputError`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from osad.attacks.base import Attack
from osad.attacks.engine import attack, check_budget
from osad.attacks.objectives import Objective
from osad.attacks.registry import Param, register_attack


@register_attack(
    "pgd",
    "projected gradient descent from a random start (Madry et al. 2018)",
    params={
        "alpha": Param(
            0.25,
            "step size in 1/255 (default: 0.25 eps)",
            per_eps=True,
            above=0,
            caption="step {:g}/255",
        ),
        "steps": Param(10, "iterations", at_least=1, caption="{} steps"),
        "random_start": Param(True, "start uniformly in the eps-ball, else at the image"),
    },
)
class PGD(Attack):
    """Projected gradient descent (Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083).

    Maximises the objective by ``steps`` steps
    ``delta <- P(delta + alpha * sign(grad))`` (linf) or
    ``delta <- P(delta + alpha * grad / ||grad||_2)`` (l2), ``P`` the projection onto
    the eps-ball and the [0, 1] box, from a uniform random start in the ball.

    Args:
        model: maps images in [0, 1] to logits (normalisation inside the model).
        eps: budget in [0, 1] units (default 8/255).
        alpha: step size (default ``eps / 4``).
        steps: iterations (default 10).
        norm: ``"linf"`` (default) or ``"l2"``.
        restarts: random starts; the best point per sample is kept (default 1).
        random_start: start uniformly in the ball, else at ``x`` (default True).
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``; ignored when ``objective``
            is given.
        objective: any per-sample objective to maximise (see
            :mod:`osad.attacks.objectives`), instead of ``loss``.
        select: ``"best"`` point per sample over all iterates, or the ``"last"`` iterate.
        generator: random source for the starts.

    Example::

        >>> x_adv = PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        *,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        objective: Objective | None = None,
        select: str = "best",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model, eps, norm, restarts, loss, objective, generator)
        alpha = eps / 4 if alpha is None else alpha
        check_budget(eps, norm, restarts, alpha=alpha, steps=steps, select=select)
        self.alpha, self.steps = alpha, steps
        self.random_start, self.select = random_start, select

    def perturb(self, x: Tensor, y: Tensor | None, *, targeted: bool) -> Tensor:
        return attack(
            self.model,
            x,
            y,
            alpha=self.alpha,
            steps=self.steps,
            random_start=self.random_start,
            targeted=targeted,
            select=self.select,
            **self.shared_arguments(),
        )

    def settings(self) -> dict[str, Any]:
        return {"alpha": f"{self.alpha * 255:g}/255", "steps": self.steps}


@register_attack(
    "fgsm",
    "one signed-gradient step of size eps (Goodfellow et al. 2015)",
    params={
        "alpha": Param(1.0, "step size in 1/255: eps", per_eps=True, fixed=True),
        "steps": Param(1, "iterations: one", fixed=True),
        "random_start": Param(False, "start uniformly in the eps-ball, else at the image"),
    },
)
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al., ICLR 2015,
    https://arxiv.org/abs/1412.6572): one step of size eps, ``x + eps * sign(grad)``.

    Args: ``eps`` (default 8/255) and the keywords of :class:`PGD` except ``alpha``
    and ``steps``; ``random_start`` defaults to False.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, **kwargs: Any) -> None:
        kwargs.setdefault("random_start", False)
        super().__init__(model, eps=eps, alpha=eps, steps=1, **kwargs)


@register_attack(
    "fgsm-rs",
    "one signed-gradient step from a random start (Wong et al. 2020)",
    params={
        "alpha": Param(
            1.25,
            "step size in 1/255 (default: 1.25 eps)",
            per_eps=True,
            above=0,
            caption="step {:g}/255",
        ),
        "steps": Param(1, "iterations: one", fixed=True),
        "random_start": Param(True, "always from a random start", fixed=True),
    },
)
class FGSMRS(PGD):
    """FGSM from a random start (Wong, Rice & Kolter, ICLR 2020, "Fast is better than
    free", https://arxiv.org/abs/2001.03994)::

        delta ~ U(-eps, eps);  delta <- P(delta + alpha * sign(grad));  alpha = 1.25 eps

    Args: ``eps`` (default 8/255), ``alpha`` (default ``1.25 * eps``) and the keywords
    of :class:`PGD` except ``steps`` and ``random_start`` (always one step from a
    random start).
    """

    def __init__(
        self, model: nn.Module, eps: float = 8 / 255, alpha: float | None = None, **kwargs: Any
    ) -> None:
        alpha = 1.25 * eps if alpha is None else alpha
        super().__init__(model, eps=eps, alpha=alpha, steps=1, random_start=True, **kwargs)
