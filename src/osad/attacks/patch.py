"""The rectangular occlusion attack (ROA): an adversarial patch, placed and then optimised.

Wu, Tong and Vorobeychik, "Defending against Physically Realizable Attacks on
Image Classification", ICLR 2020, https://arxiv.org/abs/1909.09552. OSDN-CAML
(Shao et al., IJCV 2022, https://arxiv.org/abs/2202.05953) tests and trains
with it as a physically realisable threat.

For each image, with ``L`` the attack objective (cross-entropy by default):

1. position, by their gradient-based search: ``g = dL/dx`` at the clean image;
   every ``size x size`` window (stride ``stride``) is ranked by
   ``sum_window sum_channels g^2``; the top ``candidates`` windows are tried
   exactly, each filled with gray (0.5), and the one with the highest ``L`` wins;
2. content: PGD inside the chosen window only, from the gray fill (or a uniform
   random fill with ``random_start``), ``patch <- clip_[0,1](patch + alpha sign(g))``;
   the patch may take any value in [0, 1], the rest of the image is untouched.

Step 2 is :func:`osad.attacks.engine.attack` with a mask on the perturbation
and an unbounded linf budget, so the patch attack has the engine's guarantees
(eval mode, no parameter gradients, best point per sample).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osad.attacks.base import Attack
from osad.attacks.engine import (
    Oracle,
    attack,
    attack_mode,
    check_attack_inputs,
    check_budget,
    resolve_labels,
)
from osad.attacks.objectives import Objective
from osad.attacks.registry import Param, register_attack
from osad.errors import ConfigError, InputError

GRAY = 0.5


def window_mask(shape: torch.Size, rows: Tensor, cols: Tensor, size: int) -> Tensor:
    """(B, 1, H, W) mask, 1 on the ``size x size`` window at (``rows[i]``, ``cols[i]``)."""
    h, w = shape[-2:]
    r = torch.arange(h, device=rows.device).view(1, h, 1)
    c = torch.arange(w, device=cols.device).view(1, 1, w)
    top, left = rows.view(-1, 1, 1), cols.view(-1, 1, 1)
    inside = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)
    return inside.unsqueeze(1).float()


def ranked_windows(grad: Tensor, size: int, stride: int, count: int) -> tuple[Tensor, Tensor]:
    """(rows, cols), each (B, count): the windows with the largest squared gradient, best first."""
    energy = F.avg_pool2d(grad.pow(2).sum(1, keepdim=True), size, stride)  # (B, 1, H', W')
    positions_per_row = energy.shape[-1]
    top = energy.flatten(1).topk(min(count, energy[0].numel()), dim=1).indices
    return (top // positions_per_row) * stride, (top % positions_per_row) * stride


def filled(x: Tensor, mask: Tensor, value: float | Tensor) -> Tensor:
    return x * (1 - mask) + value * mask


# The patch may take any value in [0, 1], so its budget is the whole range; alpha
# 0.05 eps = 12.75/255 per step.
@register_attack(
    "patch",
    "rectangular occlusion placed by gradient search (Wu et al. 2020)",
    params={
        "alpha": Param(
            0.05,
            "step size in 1/255 (default: 0.05 eps)",
            per_eps=True,
            above=0,
            caption="step {:g}/255",
        ),
        "steps": Param(10, "PGD iterations on the patch", at_least=1, caption="{} steps"),
        "random_start": Param(False, "start from a random patch, else gray"),
        "patch_size": Param(5, "side of the square patch in pixels", at_least=1, arg="size"),
        "candidates": Param(20, "best-ranked positions tried exactly", at_least=1),
    },
    fixed={"eps": 255.0, "norm": "linf"},
)
class Patch(Attack):
    """Rectangular occlusion attack (Wu et al., ICLR 2020, https://arxiv.org/abs/1909.09552).

    One ``size x size`` patch per image, placed by gradient-guided search over
    candidate positions and optimised by PGD to any values in [0, 1] (see the
    module docstring).

    Args:
        model: maps images in [0, 1] to logits (normalisation inside the model).
        size: side of the square patch in pixels (default 5).
        alpha: PGD step on patch pixels, in [0, 1] units (default 0.05).
        steps: PGD iterations (default 10: from gray, 10 x 0.05 reaches 0 and 1).
        candidates: best-ranked positions tried exactly (default 20).
        stride: spacing of candidate positions in pixels (default 1).
        restarts: PGD restarts at the chosen position; the best per sample is kept.
        random_start: start from a uniformly random patch instead of gray.
        loss, objective, select, generator: as for :class:`~osad.attacks.PGD`.

    Example::

        >>> x_adv = Patch(model, size=5, steps=10)(images, labels)
    """

    @classmethod
    def caption(cls, config: Any) -> str:
        size = config.params["patch_size"]
        return f"Patch {size}x{size}, {config.params['candidates']} candidate positions"

    @classmethod
    def check_config(cls, params: dict[str, Any], key: str, image_size: int | None) -> None:
        size = params["patch_size"]
        if image_size is not None and size > image_size:
            raise ConfigError(
                f"'{key}.patch_size' {size} does not fit the {image_size}x{image_size} images"
            )

    def __init__(
        self,
        model: nn.Module,
        size: int = 5,
        alpha: float = 0.05,
        steps: int = 10,
        *,
        candidates: int = 20,
        stride: int = 1,
        restarts: int = 1,
        random_start: bool = False,
        loss: str = "ce",
        objective: Objective | None = None,
        select: str = "best",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model, 1.0, "linf", restarts, loss, objective, generator)
        check_budget(1.0, "linf", restarts, alpha=alpha, steps=steps, select=select)
        for name, value in (("size", size), ("candidates", candidates), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        self.size, self.alpha, self.steps = size, alpha, steps
        self.candidates, self.stride = candidates, stride
        self.random_start, self.select = random_start, select

    def locate(self, x: Tensor, oracle: Oracle) -> Tensor:
        """The (B, 1, H, W) mask of the chosen patch position of each image."""
        _, grad = oracle.with_gradient(x)
        rows, cols = ranked_windows(grad, self.size, self.stride, self.candidates)
        best_value = torch.full((x.shape[0],), -torch.inf, device=x.device)
        best = torch.zeros_like(rows[:, 0])
        for k in range(rows.shape[1]):
            occluded = filled(x, window_mask(x.shape, rows[:, k], cols[:, k], self.size), GRAY)
            value = oracle(occluded).value
            better = value > best_value
            best = torch.where(better, torch.full_like(best, k), best)
            best_value = torch.where(better, value, best_value)
        index = torch.arange(x.shape[0], device=x.device)
        return window_mask(x.shape, rows[index, best], cols[index, best], self.size)

    def perturb(self, x: Tensor, y: Tensor | None, *, targeted: bool) -> Tensor:
        check_attack_inputs(x, y, self.objective)
        h, w = x.shape[-2:]
        if self.size > min(h, w):
            raise InputError(f"a {self.size}x{self.size} patch does not fit {h}x{w} images")
        x = x.detach()
        with attack_mode(self.model, gradients=True):
            labels = resolve_labels(self.model, x, y)
            mask = self.locate(x, Oracle(self.model, self.objective, labels, targeted))

        def fill(x: Tensor) -> Tensor:
            if not self.random_start:
                return filled(x, mask, GRAY) - x
            noise = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
            return filled(x, mask, noise) - x

        return attack(
            self.model,
            x,
            labels,
            objective=self.objective,
            eps=1.0,
            alpha=self.alpha,
            steps=self.steps,
            norm="linf",
            restarts=self.restarts,
            targeted=targeted,
            select=self.select,
            generator=self.generator,
            mask=mask,
            init=fill,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "alpha": f"{self.alpha * 255:g}/255",
            "steps": self.steps,
            "candidates": self.candidates,
        }
