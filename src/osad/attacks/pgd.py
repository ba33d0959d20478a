"""Named attacks: thin front-ends over :func:`osad.attacks.engine.attack`.

Usage::

    atk = PGD(model, eps=8/255, alpha=2/255, steps=10)
    x_adv = atk(x, y)            # y=None attacks the model's own prediction

Images must be float in [0, 1]; budgets are in the same units. Bad images,
labels or budgets raise :class:`~osad.errors.InputError`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from osad.attacks.engine import attack, check_budget
from osad.attacks.objectives import Objective, cross_entropy


class Attack:
    """An attack bound to a model and a budget; call it on (images, labels)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        alpha: float,
        steps: int,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        objective: Objective = cross_entropy,
        select: str = "best",
        generator: torch.Generator | None = None,
    ) -> None:
        check_budget(eps, alpha, steps, norm, restarts, select)
        self.model = model
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.norm, self.restarts, self.random_start = norm, restarts, random_start
        self.objective, self.select, self.generator = objective, select, generator

    def __call__(self, x: Tensor, y: Tensor | None = None, *, targeted: bool = False) -> Tensor:
        return attack(
            self.model,
            x,
            y,
            objective=self.objective,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            norm=self.norm,
            restarts=self.restarts,
            random_start=self.random_start,
            targeted=targeted,
            select=self.select,
            generator=self.generator,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps * 255:g}/255, alpha={self.alpha * 255:g}/255, "
            f"steps={self.steps}, norm={self.norm}, restarts={self.restarts})"
        )


class PGD(Attack):
    """Projected gradient descent (Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083).

    Args: ``eps`` (default 8/255), ``alpha`` step (2/255), ``steps`` (10),
    ``norm`` ("linf" or "l2"), ``restarts`` (1), ``random_start`` (True).
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        **kwargs,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, **kwargs)


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al., ICLR 2015): one step of size eps."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, **kwargs) -> None:
        kwargs.setdefault("random_start", False)
        super().__init__(model, eps=eps, alpha=eps, steps=1, **kwargs)


class FGSMRS(Attack):
    """FGSM with a uniform random start and step 1.25 eps (Wong et al., ICLR 2020,
    "Fast is better than free", https://arxiv.org/abs/2001.03994)."""

    def __init__(
        self, model: nn.Module, eps: float = 8 / 255, alpha: float | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("random_start", True)
        alpha = 1.25 * eps if alpha is None else alpha
        super().__init__(model, eps=eps, alpha=alpha, steps=1, **kwargs)
