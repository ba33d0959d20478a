"""The interface every named attack shares: ``Attack(model, eps=...)(images, labels)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from osad.attacks.engine import check_budget, count_nonfinite
from osad.attacks.objectives import Objective, get_objective


class Attack(ABC):
    """An attack bound to a model, a budget and an objective; call it on (images, labels).

    Images are in [0, 1]; ``eps`` is in the same units (``8/255``). Calling the
    attack returns adversarial images of the same shape, detached, with
    ``||x_adv - x|| <= eps`` in the attack's norm and every pixel in [0, 1].
    """

    name: ClassVar[str] = ""  # set by osad.attacks.registry.register_attack
    label: ClassVar[str] = ""  # how captions name it (default: the name in capitals)
    caption_names_loss: ClassVar[bool] = False  # whether caption() shows the loss

    @classmethod
    def caption(cls, config: Any) -> str:
        """The head of the one-line description of a resolved AttackConfig (budget in
        1/255), e.g. ``PGD linf eps 8/255``; see :func:`osad.attacks.registry.describe`."""
        return f"{cls.label or cls.name.upper()} {config.norm} eps {config.eps:g}/255"

    @classmethod
    def check_config(cls, params: dict[str, Any], key: str, image_size: int | None) -> None:
        """Checks of the resolved ``params`` of an AttackConfig named ``key`` that need
        the images' side ``image_size`` (pixels; None: not known yet); raise
        :class:`~osad.errors.ConfigError` if wrong."""
        return None

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str,
        restarts: int,
        loss: str,
        objective: Objective | None,
        generator: torch.Generator | None,
    ) -> None:
        check_budget(eps, norm, restarts)
        self.model = model
        self.eps, self.norm, self.restarts = eps, norm, restarts
        # An explicit objective (e.g. a detector score) replaces the named loss.
        self.objective = get_objective(loss) if objective is None else objective
        self.generator = generator
        self.nonfinite: torch.Tensor | None = None  # set by each call, see __call__

    def __call__(self, x: Tensor, y: Tensor | None = None, *, targeted: bool = False) -> Tensor:
        """Attack ``x`` with labels ``y`` (``None``: the model's prediction on ``x``).

        ``targeted=True`` minimises the objective instead, with ``y`` the target.
        Samples whose objective value or input gradient was not finite are counted in
        one :class:`~osad.attacks.engine.NonFiniteWarning` and flagged in
        ``self.nonfinite`` ((B,) bool, CPU).
        """
        with count_nonfinite() as record:
            x_adv = self.perturb(x, y, targeted=targeted)
        # Per sample: a non-finite objective value or input gradient was met (warned).
        self.nonfinite = record.report(self, len(x))
        return x_adv

    @abstractmethod
    def perturb(self, x: Tensor, y: Tensor | None, *, targeted: bool) -> Tensor: ...

    def shared_arguments(self) -> dict[str, Any]:
        """The keywords every attack function of osad takes, from this attack's settings."""
        return dict(
            objective=self.objective,
            eps=self.eps,
            norm=self.norm,
            restarts=self.restarts,
            generator=self.generator,
        )

    def settings(self) -> dict[str, Any]:
        """The attack-specific settings shown by ``repr``."""
        return {}

    def __repr__(self) -> str:
        fields = {"eps": f"{self.eps * 255:g}/255", **self.settings()}
        fields.update(norm=self.norm, restarts=self.restarts, objective=self.objective)
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"
