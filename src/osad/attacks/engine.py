"""One attack engine for every gradient attack of osad.

Images are in [0, 1] pixel space; the model normalises internally. Budgets are
in the same [0, 1] units (``eps=8/255``). The engine

* never writes gradients into model parameters (it asks autograd for the
  input gradient only),
* runs the model in eval mode (BatchNorm uses running statistics, so samples
  do not interact and the model's statistics are not updated), restoring the
  previous mode afterwards,
* keeps, per sample, the perturbation with the highest objective over all
  iterates and restarts (``select="best"``) or the last iterate
  (``select="last"``, the usual choice inside adversarial training).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from osad.attacks.objectives import Objective, cross_entropy
from osad.errors import InputError
from osad.inputs import check_images, check_labels, inputs_checked

NORMS = ("linf", "l2")
SELECT = ("best", "last")


def check_budget(
    eps: float, alpha: float, steps: int, norm: str, restarts: int = 1, select: str = "best"
) -> None:
    """Raise :class:`InputError` for an attack setting out of range (budgets in [0, 1] units)."""
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if select not in SELECT:
        raise InputError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    if not eps >= 0:
        raise InputError(f"eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise InputError(
            f"eps must be <= 1 for linf: budgets are in [0, 1] pixel units "
            f"(write eps={eps:g}/255 for {eps:g} gray levels), got {eps}"
        )
    if not alpha >= 0:
        raise InputError(f"alpha must be >= 0, got {alpha}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1, got {restarts!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, restoring each one's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_outputs(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(logits, features) from ``model.forward_features`` if it has one, else (model(x), None)."""
    forward_features = getattr(model, "forward_features", None)
    if callable(forward_features):
        return forward_features(x)
    return model(x), None


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the eps-ball of ``norm``, then into the [0, 1] box."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        delta = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * delta - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        delta = direction * (radius * eps).view(-1, *([1] * (x.dim() - 1)))
    return _project(delta, x, eps, norm)


def _ascent_step(grad: Tensor, alpha: float, norm: str) -> Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _per_sample_norm(grad).clamp_min(1e-12)


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    objective: Objective = cross_entropy,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    restarts: int = 1,
    random_start: bool = True,
    targeted: bool = False,
    select: str = "best",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent of ``objective`` within an ``eps``-ball around ``x``.

    Args:
        model: maps images in [0, 1] to logits (optionally ``forward_features``).
        x: float images in [0, 1], shape (B, C, H, W).
        y: (B,) integer labels passed to the objective; ``None`` uses the model's
            prediction on ``x``.
        objective: per-sample loss to maximise, see :mod:`osad.attacks.objectives`.
        eps, alpha: budget and step size in [0, 1] pixel units.
        steps: gradient steps per restart.
        norm: ``"linf"`` or ``"l2"``.
        restarts: independent random starts; the best per sample is returned.
        random_start: start uniformly in the ball (else at ``x``).
        targeted: minimise the objective instead (``y`` is then the target).
        select: ``"best"`` iterate per sample, or ``"last"`` iterate.
        generator: random source for the starts (reproducible attacks).

    Returns:
        Adversarial images in [0, 1] with ``||x_adv - x|| <= eps``, detached.

    Raises:
        InputError: images not float (B, C, H, W) in [0, 1], labels not (B,) integers
            >= 0, or a budget out of range (``eps`` > 1 under linf is taken as a /255 slip).
    """
    check_budget(eps, alpha, steps, norm, restarts, select)
    check_images(x)
    if y is not None:
        check_labels(y, x.shape[0])
    x = x.detach()
    sign = -1.0 if targeted else 1.0
    # Iterates stay in [0, 1] by construction: the model need not re-check them.
    with eval_mode(model), torch.enable_grad(), inputs_checked():
        if y is None:
            with torch.no_grad():
                y = model_outputs(model, x)[0].argmax(dim=1)
        track_best = select == "best" or restarts > 1
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)

        def keep_better(candidate: Tensor, loss: Tensor) -> None:
            better = loss > best_loss
            best_loss.copy_(torch.where(better, loss, best_loss))
            best.copy_(torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best))

        def evaluate(x_adv: Tensor) -> Tensor:
            logits, features = model_outputs(model, x_adv)
            if getattr(objective, "needs_images", False):
                return sign * objective(logits, features, y, images=x_adv)
            return sign * objective(logits, features, y)

        for _ in range(restarts):
            delta = _random_start(x, eps, norm, generator) if random_start else torch.zeros_like(x)
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = evaluate(x + delta)
                (grad,) = torch.autograd.grad(loss.sum(), delta)
                delta = delta.detach()
                if track_best:
                    keep_better(x + delta, loss.detach())
                delta = _project(delta + _ascent_step(grad, alpha, norm), x, eps, norm)
            if track_best:
                with torch.no_grad():
                    keep_better(x + delta, evaluate(x + delta))
            else:
                best = x + delta
    return best.detach()
