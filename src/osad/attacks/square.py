"""Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack:
a query-efficient black-box adversarial attack via random search",
https://arxiv.org/abs/1912.00049).

A score-based black-box attack: it only reads the objective at chosen points
(forward passes under ``torch.no_grad``), so a defence that hides or breaks
its gradients does not stop it. That makes it the gradient-masking check: if
Square beats the white-box attacks, their gradients were misleading.

Random search: from a start on the boundary of the ball, each iteration
changes one random square window of side ``s`` and keeps the change only if
the objective increases. ``s = round(sqrt(p_i * H * W))``, where the fraction
``p_i`` starts at ``p_init`` and halves at 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 ten-thousandths of the query budget.

* linf: the start is vertical stripes ``x + eps * r`` with one random sign
  ``r`` per (channel, column); a window is set to ``+-eps``, one random sign
  per channel, resampled until it differs from the current window (at most 32
  draws: a budget below the pixels' float resolution can change nothing).
* l2: the start is a 5x5 grid of pseudo-Gaussian blocks of random sign, scaled
  to norm ``eps``. An update picks two windows ``W1``, ``W2``; per channel it
  moves the perturbation of both (plus the unused budget) into ``W1`` as a
  random-sign pseudo-Gaussian bump added to ``W1``'s normalised content, and
  clears ``W2``; the result is scaled back to norm ``eps``.

A sample stops being queried once the objective reports success
(misclassification for the margin loss), and restarts only re-attack samples
that have not succeeded.
"""

from __future__ import annotations

import bisect
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
    per_sample_norm,
    project,
    resolve_labels,
    working_dtype,
)
from osad.attacks.objectives import Objective, margin
from osad.attacks.registry import Param, register_attack
from osad.errors import InputError
from osad.inputs import inputs_checked

# Where p halves, in ten-thousandths of the query budget.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Most redraws of a linf window's signs (see _linf_proposal).
SIGN_DRAWS = 32
L2_GRID = 5


def check_search(queries: int, p_init: float) -> None:
    """Raise :class:`InputError` for a query budget or initial square fraction out of range."""
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise InputError(f"queries must be an integer >= 1, got {queries!r}")
    if not 0 < p_init <= 1:
        raise InputError(f"p_init must be in (0, 1], got {p_init}")


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction ``p_i`` of pixels the window covers at ``iteration`` of ``queries``."""
    progress = int(iteration / queries * 10000)
    return p_init / 2 ** bisect.bisect_left(P_HALVINGS, progress)


def square_side(fraction: float, height: int, width: int) -> int:
    """The side ``s = round(sqrt(p H W))`` of the window, in ``1..min(H, W) - 1``."""
    side = round(math.sqrt(fraction * height * width))
    return min(max(side, 1), max(min(height, width) - 1, 1))


def _rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None):
    signs = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * signs - 1).to(working_dtype(like.dtype))


def _window_origins(
    n: int, side: int, like: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    height, width = like.shape[-2:]
    kw = dict(generator=generator, device=like.device)
    return (
        torch.randint(0, height - side + 1, (n,), **kw),
        torch.randint(0, width - side + 1, (n,), **kw),
    )


def _window_offsets(rows: Tensor, cols: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """Each pixel's (row, column) offset from its sample's window origin, (n, H, W) each."""
    height, width = like.shape[-2:]
    r = torch.arange(height, device=like.device)[None, :, None] - rows[:, None, None]
    c = torch.arange(width, device=like.device)[None, None, :] - cols[:, None, None]
    return r.expand(-1, -1, width), c.expand(-1, height, -1)


def _window_mask(rows: Tensor, cols: Tensor, side: int, like: Tensor) -> Tensor:
    """(n, 1, H, W): True inside each sample's ``side`` x ``side`` window."""
    r, c = _window_offsets(rows, cols, like)
    return ((r >= 0) & (r < side) & (c >= 0) & (c < side))[:, None]


def _pseudo_gaussian(height: int, width: int, like: Tensor) -> Tensor:
    """Concentric rectangles around the centre; ring ``k`` (Chebyshev distance) holds
    ``sum_{j >= k} 1 / (j + 1)^2``, so the bump peaks in the middle. Unit L2 norm."""
    rows = (torch.arange(height, device=like.device) - height // 2).abs()
    cols = (torch.arange(width, device=like.device) - width // 2).abs()
    ring = torch.maximum(rows[:, None], cols[None, :])
    work = working_dtype(like.dtype)
    weights = 1.0 / (torch.arange(int(ring.max()) + 1, device=like.device, dtype=work) + 1)
    tail = weights.square().flip(0).cumsum(0).flip(0)
    bump = tail[ring]
    return bump / bump.norm()


def _square_profile(side: int, like: Tensor) -> Tensor:
    """The l2 update shape: a pseudo-Gaussian bump on the top half and a negative one
    on the bottom half, each of unit norm, then scaled to unit norm; (side, side)."""
    top = side // 2
    halves = [-_pseudo_gaussian(side - top, side, like)]
    if top:
        halves.insert(0, _pseudo_gaussian(top, side, like))
    profile = torch.cat(halves)
    return profile / profile.norm()


def _placed_profile(
    rows: Tensor, cols: Tensor, side: int, like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """(n, 1, H, W): the l2 profile in each sample's window, transposed for a random half."""
    profile = _square_profile(side, like)
    profiles = torch.stack([profile, profile.T])
    transpose = torch.randint(0, 2, (len(rows),), generator=generator, device=like.device)
    r, c = _window_offsets(rows, cols, like)
    inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
    values = profiles[transpose[:, None, None], r.clamp(0, side - 1), c.clamp(0, side - 1)]
    return torch.where(inside, values, torch.zeros_like(values))[:, None]


def _channel_norm(t: Tensor) -> Tensor:
    """The L2 norm over (H, W) of each sample and channel, shaped (n, C, 1, 1)."""
    return t.square().sum(dim=(2, 3), keepdim=True).sqrt()


def _linf_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    n, channels, _, width = x.shape
    stripes = eps * _rademacher((n, channels, 1, width), x, generator)
    return project(stripes.expand_as(x), x, eps, "linf")


def _linf_proposal(
    x: Tensor, delta: Tensor, eps: float, side: int, generator: torch.Generator | None
) -> Tensor:
    rows, cols = _window_origins(len(x), side, x, generator)
    window = _window_mask(rows, cols, side, x)
    proposal = delta
    pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
    # Where the two signs of a channel give different pixels, each draw changes the
    # window with probability >= 1/2, so SIGN_DRAWS draws all fail with probability
    # 2**-SIGN_DRAWS. Where no draw can change it (eps below the pixels' float
    # resolution), the sample keeps its perturbation and the query is spent.
    for _ in range(SIGN_DRAWS):
        signs = eps * _rademacher((len(x), x.shape[1], 1, 1), x, generator)
        drawn = project(torch.where(window, signs, delta), x, eps, "linf")
        proposal = torch.where(per_sample(pending, x), drawn, proposal)
        pending = ~(proposal != delta).flatten(1).any(dim=1)
        if not bool(pending.any()):
            break
    return proposal


def _l2_scaled(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    """``delta`` scaled to norm ``eps``, then ``x + delta`` clipped into the box."""
    return project(delta * eps / per_sample_norm(delta).clamp_min(1e-12), x, eps, "l2")


def _l2_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    n, channels, height, width = x.shape
    block = max(min(height, width) // L2_GRID, 1)
    count = min(L2_GRID, min(height, width) // block)
    top, left = (height - count * block) // 2, (width - count * block) // 2
    profile = _square_profile(block, x)
    delta = torch.zeros_like(x, dtype=working_dtype(x.dtype))
    for i in range(count):
        for j in range(count):
            r, c = top + i * block, left + j * block
            signs = _rademacher((n, channels, 1, 1), x, generator)
            delta[:, :, r : r + block, c : c + block] += signs * profile
    return _l2_scaled(x, delta, eps)


def _l2_proposal(
    x: Tensor, delta: Tensor, eps: float, side: int, generator: torch.Generator | None
) -> Tensor:
    n, channels = x.shape[:2]
    rows, cols = _window_origins(n, side, x, generator)
    first = _window_mask(rows, cols, side, x)
    second = _window_mask(*_window_origins(n, side, x, generator), side, x)
    inside_first = torch.where(first, delta, torch.zeros_like(delta))
    both = torch.where(first | second, delta, torch.zeros_like(delta))
    unused = (eps**2 - per_sample_norm(delta).square()).clamp_min(0.0)
    available = (_channel_norm(both).square() + unused / channels).sqrt()
    bump = _rademacher((n, channels, 1, 1), x, generator) * _placed_profile(
        rows, cols, side, x, generator
    )
    moved = bump + inside_first / _channel_norm(inside_first).clamp_min(1e-12)
    moved = moved / _channel_norm(moved).clamp_min(1e-12) * available
    cleared = torch.where(second, torch.zeros_like(delta), delta)
    return _l2_scaled(x, torch.where(first, moved, cleared), eps)


_START = {"linf": _linf_start, "l2": _l2_start}
_PROPOSAL = {"linf": _linf_proposal, "l2": _l2_proposal}


def _search(
    oracle: Oracle,
    x: Tensor,
    index: Tensor,
    *,
    eps: float,
    norm: str,
    queries: int,
    p_init: float,
    generator: torch.Generator | None,
    best: BestPoint,
    used: Tensor,
) -> None:
    """One random search over the samples at ``index``, offering its result to ``best``."""
    oracle, x = oracle.subset(index), x[index]
    delta = _START[norm](x, eps, generator)
    current = oracle(x + delta)
    used[index] += 1
    height, width = x.shape[-2:]
    for i in range(queries - 1):
        active = (~current.success).nonzero().squeeze(1)
        if len(active) == 0:
            break
        side = square_side(square_fraction(p_init, i, queries), height, width)
        x_a, delta_a = x[active], delta[active]
        proposal = _PROPOSAL[norm](x_a, delta_a, eps, side, generator)
        tried = oracle.subset(active)(x_a + proposal)
        used[index[active]] += 1
        better = tried.value > current.value[active]
        delta[active] = torch.where(per_sample(better, x_a), proposal, delta_a)
        current.value[active] = torch.where(better, tried.value, current.value[active])
        current.success[active] = torch.where(better, tried.success, current.success[active])
    best.offer(x + delta, current, index)


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    objective: Objective = margin,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Square attack on ``objective`` (see the module docstring).

    Args:
        model: maps images in [0, 1] to logits; only its outputs are read.
        x: images in [0, 1], shape (B, C, H, W).
        y: labels passed to the objective; ``None`` uses the model's prediction on ``x``.
        objective: per-sample value to maximise (default: the margin loss).
        eps: budget in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        queries: forward passes per sample and restart, the start included.
        p_init: initial fraction of the image one window covers.
        restarts: fresh random searches for the samples not yet successful.
        targeted: minimise the objective (no early stop).
        generator: random source (reproducible attacks).

    Returns:
        (adversarial images, detached, within the budget and the box; queries used
        per sample, not counting the prediction that replaces a missing ``y``).
    """
    check_budget(eps, norm, restarts)
    check_search(queries, p_init)
    check_attack_inputs(x, y, objective)
    x = x.detach()
    used = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if eps == 0:
        return x.clone(), used
    with attack_mode(model, gradients=False), inputs_checked():
        oracle = Oracle(model, objective, resolve_labels(model, x, y), targeted)
        best = BestPoint(x)
        for _ in range(restarts):
            todo = (~best.success).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            _search(
                oracle,
                x,
                todo,
                eps=eps,
                norm=norm,
                queries=queries,
                p_init=p_init,
                generator=generator,
                best=best,
                used=used,
            )
    return best.images.to(x.dtype), used


@register_attack(
    "square",
    "black-box random search over square windows (Andriushchenko et al. 2020)",
    params={
        "queries": Param(5000, "forward passes per sample", at_least=1, caption="{} queries"),
        "p_init": Param(0.8, "initial window fraction", above=0, at_most=1, caption="p_init {:g}"),
    },
    can_train=False,
    loss="margin",
)
class Square(Attack):
    """Square attack (Andriushchenko et al., ECCV 2020, https://arxiv.org/abs/1912.00049):
    score-based black-box random search over square windows; forward passes only.

    Args:
        model: maps images in [0, 1] to logits; called under ``torch.no_grad``.
        eps: budget in [0, 1] units (default 8/255).
        queries: forward passes per sample and restart, the start included (default
            5000, as in AutoAttack).
        norm: ``"linf"`` (default) or ``"l2"``.
        p_init: initial fraction of the image a window covers (default 0.8, as in
            AutoAttack; the paper uses 0.05 on undefended ImageNet models).
        loss: ``"margin"`` (default), ``"ce"`` or ``"dlr"``; ignored when
            ``objective`` is given.
        restarts: fresh searches for the samples not yet successful (default 1).
        objective: any per-sample objective, instead of ``loss``. A sample stops
            once the objective reports success (for the losses: misclassified).
        generator: random source (set it for reproducible attacks).

    After a call, ``queries_used`` holds the forward passes spent on each sample.

    Example::

        >>> atk = Square(model, eps=8/255, queries=1000, generator=torch.Generator().manual_seed(0))
        >>> x_adv = atk(images, labels); atk.queries_used.float().mean()
    """

    label = "Square"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        queries: int = 5000,
        norm: str = "linf",
        p_init: float = 0.8,
        loss: str = "margin",
        restarts: int = 1,
        *,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model, eps, norm, restarts, loss, objective, generator)
        check_search(queries, p_init)
        self.queries, self.p_init = queries, p_init
        self.queries_used: Tensor | None = None

    def perturb(self, x: Tensor, y: Tensor | None, *, targeted: bool) -> Tensor:
        x_adv, self.queries_used = square(
            self.model,
            x,
            y,
            queries=self.queries,
            p_init=self.p_init,
            targeted=targeted,
            **self.shared_arguments(),
        )
        return x_adv

    def settings(self) -> dict[str, Any]:
        return {"queries": self.queries, "p_init": self.p_init}
