"""The attack engine: the pieces every attack of osad shares, and PGD.

Images are in [0, 1] pixel space; the model normalises internally. Budgets are
in the same [0, 1] units (``eps=8/255``). Every attack built on this module

* runs the model in eval mode (:func:`attack_mode`): BatchNorm uses running
  statistics, so samples do not interact and the statistics are not updated;
  each submodule's previous mode is restored afterwards;
* never writes gradients into model parameters: :class:`Oracle` asks autograd
  for the input gradient only, and black-box attacks run under ``no_grad``;
* keeps the sample inside the ``eps``-ball and the [0, 1] box (:func:`project`), in
  the images' own dtype: the projection is computed in float64 and each pixel is
  rounded towards the clean image, so ``||x_adv - x|| <= eps`` holds for float16,
  bfloat16, float32 and float64 images alike (steps run in float32 or wider);
* runs the model in its own dtype: images of another floating dtype are cast to it
  at each forward pass (:func:`model_outputs`);
* returns, per sample, the best point over all iterates and restarts
  (:class:`BestPoint`): a point where the objective reports success beats one
  where it does not, and among equals the higher objective wins;
* notes every sample whose objective value or input gradient was not finite
  (:func:`count_nonfinite`): no attack can follow such a sample, so its figure
  would overstate robustness; a named attack warns and keeps the flags.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from osad.attacks.objectives import (
    Objective,
    cross_entropy,
    objective_success,
    objective_values,
)
from osad.errors import InputError
from osad.inputs import check_images, check_labels, inputs_checked
from osad.runtime import eval_mode

NORMS = ("linf", "l2")
SELECT = ("best", "last")


def check_budget(
    eps: float,
    norm: str,
    restarts: int = 1,
    *,
    alpha: float = 0.0,
    steps: int = 1,
    select: str = "best",
) -> None:
    """Raise :class:`InputError` for an attack setting out of range (budgets in [0, 1] units)."""
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if select not in SELECT:
        raise InputError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    for name, value in (("eps", eps), ("alpha", alpha)):
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            number = None
        if number is None or isinstance(value, bool | str | bytes):
            raise InputError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(number) and number >= 0):
            raise InputError(f"{name} must be >= 0 and finite (in [0, 1] pixel units), got {value}")
    if norm == "linf" and eps > 1:
        raise InputError(
            f"eps must be <= 1 for linf: budgets are in [0, 1] pixel units "
            f"(write eps={eps:g}/255 for {eps:g} gray levels), got {eps}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1, got {restarts!r}")


@contextlib.contextmanager
def attack_mode(model: nn.Module, gradients: bool) -> Iterator[nn.Module]:
    """Eval mode, with autograd on (gradient attacks) or off (black-box attacks)."""
    with eval_mode(model), torch.set_grad_enabled(gradients):
        yield model


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (or buffer); None if it has none."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), None)


def model_outputs(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(logits, features) of ``model`` at images ``x``, in the model's own dtype.

    The pair comes from ``model.forward_features(x)`` if the model has one, else
    from ``model(x)``, which returns either the (B, K) logits (features ``None``) or
    a ``(logits, features)`` pair. ``x`` is cast to the model's dtype (float64 or
    bfloat16 images attack a float32 model; autograd carries the gradient back).

    Raises:
        InputError: the model returned anything else, or logits not of shape (B, K).
    """
    dtype = model_dtype(model)
    if dtype is not None and dtype != x.dtype:
        x = x.to(dtype)
    forward_features = getattr(model, "forward_features", None)
    out = forward_features(x) if callable(forward_features) else model(x)
    if isinstance(out, Tensor):
        logits, features = out, None
    elif isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[0], Tensor):
        logits, features = out
    else:
        got = f"{type(out).__name__} of {len(out)}" if isinstance(out, tuple | list) else None
        raise InputError(
            "the model must return its logits, a (batch, classes) tensor, or a (logits, "
            f"features) pair, got a {got or type(out).__name__}; wrap it in a module whose "
            "forward returns one of these"
        )
    if logits.dim() != 2 or logits.shape[0] != x.shape[0] or not logits.is_floating_point():
        raise InputError(
            f"the model's logits must be a float tensor of shape ({x.shape[0]}, classes), got "
            f"{logits.dtype} of shape {tuple(logits.shape)}"
        )
    if features is not None and not isinstance(features, Tensor):
        raise InputError(
            f"the model's features must be a tensor or None, got {type(features).__name__}"
        )
    return logits, features


def check_label_range(labels: Tensor, logits: Tensor) -> None:
    """Raise :class:`InputError` for a label that is not one of the model's classes."""
    classes = logits.shape[1]
    if len(labels) and not torch.compiler.is_compiling():
        highest = labels.max().item()
        if highest >= classes:
            raise InputError(
                f"labels must be class indices < {classes} (the model gives {classes} "
                f"logits), got {highest}"
            )


def check_attack_inputs(x: Tensor, y: Tensor | None, objective: Objective) -> None:
    """Raise :class:`InputError` unless ``x`` is a float image batch in [0, 1] and ``y``
    is ``None`` or one class index per image (``-1`` for an unknown image where the
    objective reads it)."""
    check_images(x)
    if x.device.type == "meta":
        raise InputError(
            "images are on the meta device, which holds no values to attack; "
            "move them to a real device (cpu or cuda)"
        )
    if y is not None:
        allow_unknown = getattr(objective, "accepts_unknown_labels", False)
        check_labels(y, x.shape[0], allow_unknown=allow_unknown)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (B,) ``values`` to broadcast against ``like`` of shape (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def per_sample_norm(t: Tensor) -> Tensor:
    """The L2 norm of each sample, shaped to broadcast against ``t``."""
    return per_sample(t.flatten(1).norm(dim=1), t)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an attack steps in for images of ``dtype``: float32 or wider."""
    return torch.promote_types(dtype, torch.float32)


def project(delta: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``delta`` onto the eps-ball of ``norm``, then ``x + delta`` into the [0, 1] box.

    The box step moves each pixel towards ``x``, so it never leaves the ball. The
    projection is computed in float64; the projected image is then rounded to
    ``x``'s dtype, one step towards ``x`` where rounding to nearest went past the
    projected point, so every pixel moves at most as far as the projection says and
    the budget holds exactly in ``x``'s dtype (not just up to rounding: at
    ``eps=8/255``, bfloat16 rounding alone would add up to 0.47/255).

    Returns:
        the perturbation, in :func:`working_dtype` of ``x``: ``x + result`` is the
        projected image, exactly representable in ``x``'s dtype.
    """
    clean = x.double()
    delta = delta.double()
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    target = (clean + delta).clamp(0.0, 1.0)
    image = target.to(x.dtype)
    moved = (image.double() - clean).abs()
    past = moved > (target - clean).abs()
    if norm == "linf":  # float64 images: their own rounding of x + delta
        past |= moved > eps
    image = torch.where(past, torch.nextafter(image, x), image)
    work = working_dtype(x.dtype)
    return image.to(work) - x.to(work)


def random_init(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A perturbation drawn uniformly from the ``eps``-cube (linf), or with a uniform
    radius in a uniform direction (l2), projected into the box."""
    kw = dict(generator=generator, device=x.device, dtype=working_dtype(x.dtype))
    if norm == "linf":
        delta = torch.rand(x.shape, **kw)
        delta = (2 * delta - 1) * eps
    else:
        direction = torch.randn(x.shape, **kw)
        direction = direction / per_sample_norm(direction).clamp_min(1e-12)
        radius = torch.rand(x.shape[0], **kw)
        delta = direction * per_sample(radius * eps, x)
    return project(delta, x, eps, norm)


def steepest_ascent(grad: Tensor, norm: str) -> Tensor:
    """The unit-size step of steepest ascent for ``norm``: ``sign(g)`` or ``g / ||g||_2``."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample_norm(grad).clamp_min(1e-12)


def resolve_labels(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    """``y``, or the model's prediction on ``x`` where no labels are given."""
    if y is not None:
        return y
    with torch.no_grad():
        return model_outputs(model, x)[0].argmax(dim=1)


@dataclass
class Evaluation:
    """The attacker's view of a batch of points: value to maximise and success per sample."""

    value: Tensor
    success: Tensor


class NonFiniteWarning(UserWarning):
    """An attack met a non-finite objective value or input gradient on some samples."""


@dataclass
class NonFinite:
    """The samples of one attack call whose objective value or input gradient was not
    finite: one (B,) bool flag tensor per :class:`Oracle` the call made."""

    flags: list[Tensor] = field(default_factory=list)

    def samples(self, batch: int) -> Tensor:
        """(B,) bool: whether sample i met a non-finite value or gradient."""
        found = torch.zeros(batch, dtype=torch.bool)
        for flags in self.flags:
            found = found | flags.cpu()
        return found

    def report(self, attack: object, batch: int) -> Tensor:
        """:meth:`samples`, with one :class:`NonFiniteWarning` naming ``attack`` and the
        count when there are any."""
        found = self.samples(batch)
        if found.any():
            warn_nonfinite(attack, int(found.sum()), batch)
        return found


def warn_nonfinite(attack: object, count: int, total: int) -> None:
    """One warning line: ``attack`` met non-finite values or gradients on ``count`` samples."""
    warnings.warn(
        f"{attack}: the objective or its input gradient was not finite for {count} of "
        f"{total} samples; the attack cannot follow them, so their figures overstate "
        "robustness (see docs/evaluation.md, non-finite gradients)",
        NonFiniteWarning,
        stacklevel=3,
    )


_NONFINITE: ContextVar[NonFinite | None] = ContextVar("osad_nonfinite", default=None)


@contextlib.contextmanager
def count_nonfinite() -> Iterator[NonFinite]:
    """Collect, for the attacks run inside, which samples met a non-finite objective
    value or input gradient (every :class:`Oracle` made inside reports to it)."""
    record = NonFinite()
    token = _NONFINITE.set(record)
    try:
        yield record
    finally:
        _NONFINITE.reset(token)


class Oracle:
    """The attacked model and objective for one batch of labels.

    ``value = sign * objective`` with ``sign = -1`` for a targeted attack (which
    minimises the objective towards its target label). Success comes from the
    objective's ``success`` for untargeted attacks; a targeted attack, or an
    objective without one, never reports success.
    """

    def __init__(
        self, model: nn.Module, objective: Objective, labels: Tensor, targeted: bool = False
    ) -> None:
        self.model = model
        self.objective = objective
        self.labels = labels
        self.sign = -1.0 if targeted else 1.0
        self.targeted = targeted
        # Per sample of the whole batch: a non-finite value or gradient was met
        # (shared with subsets, whose ``rows`` say where their samples sit).
        self.nonfinite = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        self.rows: Tensor | None = None
        record = _NONFINITE.get()
        if record is not None:
            record.flags.append(self.nonfinite)
        # The labels are checked against the model's classes at the first forward pass.
        self.labels_checked = False

    def subset(self, index: Tensor) -> Oracle:
        """The same oracle for the samples at ``index``."""
        child = copy.copy(self)  # shares the flags of the whole batch
        child.labels = self.labels[index]
        child.rows = index if self.rows is None else self.rows[index]
        return child

    def _note_nonfinite(self, values: Tensor) -> None:
        """Flag the samples whose ``values`` (shape (b, ...)) are not all finite."""
        bad = ~torch.isfinite(values.detach()).flatten(1).all(dim=1)
        if self.rows is None:
            self.nonfinite |= bad
        else:
            self.nonfinite[self.rows] |= bad

    def _evaluate(self, x_adv: Tensor) -> tuple[Tensor, Tensor]:
        logits, features = model_outputs(self.model, x_adv)
        if not self.labels_checked:
            check_label_range(self.labels, logits)
            self.labels_checked = True
        value = self.sign * objective_values(self.objective, logits, features, self.labels, x_adv)
        self._note_nonfinite(value.unsqueeze(1))
        success = None
        from_value = getattr(self.objective, "success_from_value", None)
        if not self.targeted and from_value is not None:
            with torch.no_grad():  # the objective's own value decides: no second score
                success = from_value(value.detach(), self.labels)
        elif not self.targeted:
            with torch.no_grad():
                success = objective_success(
                    self.objective,
                    logits.detach(),
                    None if features is None else features.detach(),
                    self.labels,
                    x_adv.detach(),
                )
        if success is None:
            success = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
        return value, success

    def __call__(self, x_adv: Tensor) -> Evaluation:
        """Values and success at ``x_adv``, without gradients."""
        with torch.no_grad():
            value, success = self._evaluate(x_adv)
        return Evaluation(value, success)

    def with_gradient(self, x_adv: Tensor) -> tuple[Evaluation, Tensor]:
        """Values and success at ``x_adv``, and the gradient of the values w.r.t. ``x_adv``."""
        x_adv = x_adv.detach().requires_grad_(True)
        value, success = self._evaluate(x_adv)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        self._note_nonfinite(grad)
        return Evaluation(value.detach(), success), grad


class BestPoint:
    """The best point per sample seen so far: success first, then the higher value."""

    def __init__(self, x: Tensor) -> None:
        work = working_dtype(x.dtype)  # candidates come in it (see project)
        self.images = x.to(work, copy=True)
        self.value = torch.full((x.shape[0],), -torch.inf, device=x.device, dtype=work)
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def offer(self, candidate: Tensor, evaluation: Evaluation, index: Tensor | None = None) -> None:
        """Keep ``candidate`` where it is better; ``index`` names the samples it holds
        when it covers only part of the batch."""
        if index is None:  # the whole batch, offered at every step: no gather and scatter
            held = self.images, self.value, self.success
        else:
            held = self.images[index], self.value[index], self.success[index]
        held_images, held_value, held_success = held
        value, success = evaluation.value, evaluation.success
        better = (success & ~held_success) | ((success == held_success) & (value > held_value))
        kept = (
            torch.where(per_sample(better, candidate), candidate, held_images),
            torch.where(better, value, held_value),
            held_success | success,
        )
        if index is None:
            self.images, self.value, self.success = kept
        else:
            self.images[index], self.value[index], self.success[index] = kept


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
    mask: Tensor | None = None,
    init: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Projected gradient ascent (PGD) of ``objective`` within an ``eps``-ball around ``x``.

    Each step is ``delta <- P(delta + alpha * s(grad))`` with ``s`` the steepest
    ascent direction of the norm (sign for linf, normalised gradient for l2) and
    ``P`` the projection onto the ball and the [0, 1] box.

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
        select: ``"best"`` point per sample over all iterates (see :class:`BestPoint`),
            or the ``"last"`` iterate (the usual choice inside adversarial training).
        generator: random source for the starts (reproducible attacks).
        mask: 0/1 tensor broadcastable to ``x``: only pixels where it is 1 change
            (starts and steps are multiplied by it), e.g. one patch per image.
        init: ``init(x)`` gives each restart's starting perturbation, instead of
            ``random_start``'s uniform or zero one.

    Returns:
        Adversarial images in [0, 1] with ``||x_adv - x|| <= eps``, detached.

    Raises:
        InputError: images not float (B, C, H, W) in [0, 1], labels not (B,) integers
            >= 0 (-1 allowed where the objective reads unknown labels), or a budget out
            of range (``eps`` > 1 under linf is taken as a /255 slip).
    """
    check_budget(eps, norm, restarts, alpha=alpha, steps=steps, select=select)
    check_attack_inputs(x, y, objective)
    x = x.detach()
    # Iterates stay in [0, 1] by construction: the model need not re-check them.
    with attack_mode(model, gradients=True), inputs_checked():
        oracle = Oracle(model, objective, resolve_labels(model, x, y), targeted)
        best = BestPoint(x)
        track_best = select == "best" or restarts > 1
        for _ in range(restarts):
            if init is not None:
                delta = project(init(x), x, eps, norm)
            elif random_start:
                delta = random_init(x, eps, norm, generator)
            else:
                delta = torch.zeros_like(x)
            if mask is not None:
                delta = delta * mask
            for _ in range(steps):
                x_adv = x + delta
                evaluation, grad = oracle.with_gradient(x_adv)
                if track_best:
                    best.offer(x_adv, evaluation)
                if mask is not None:
                    grad = grad * mask
                delta = project(delta + alpha * steepest_ascent(grad, norm), x, eps, norm)
            if track_best:
                best.offer(x + delta, oracle(x + delta))
    return (best.images if track_best else x + delta).detach().to(x.dtype)
