"""Attack objectives: per-sample losses the attacker maximises.

An objective is a callable ``objective(logits, features, labels) -> values``
with one value per sample; higher is better for the attacker. ``features`` is
the model's latent (``None`` for models without ``forward_features``), so
objectives can attack detection scores computed in the latent space, not just
the classifier. Two optional attributes refine what the attacks do with it:

* ``needs_images = True``: the objective also needs the current (attacked)
  input images; the attacks then call it with ``images=...``.
* ``success(logits, features, labels, images=None)``: a boolean per sample,
  True where the attacker has reached its goal (for the classification losses:
  the image is misclassified). Attacks then prefer successful points over
  higher values when they pick the best per sample, and the Square attack stops
  querying a sample once it succeeded. A plain function has no ``success``.
* ``accepts_unknown_labels = True``: the objective reads the label ``-1`` of an
  unknown image (the score objectives and :func:`joint_objective`); the attacks
  refuse ``-1`` for any other objective with an :class:`~osad.errors.InputError`.

Labels follow :class:`~osad.data.OpenSetData`: a class index ``0..K-1`` for a
known image, ``-1`` for an unknown one. The classification losses need class
indices (attack unknown images with their predicted label, as the paper's
protocol does); :func:`joint_objective` applies its classification term to
known images only, so a mixed batch can be attacked in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from osad.errors import unknown_name

if TYPE_CHECKING:
    from osad.openset.base import Scorer


class Objective(Protocol):
    def __call__(self, logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor: ...


def objective_values(
    objective: Objective,
    logits: Tensor,
    features: Tensor | None,
    labels: Tensor,
    images: Tensor | None = None,
) -> Tensor:
    """``objective`` on one batch, passing ``images`` only to objectives that need them."""
    if getattr(objective, "needs_images", False):
        return objective(logits, features, labels, images=images)
    return objective(logits, features, labels)


def objective_success(
    objective: Objective,
    logits: Tensor,
    features: Tensor | None,
    labels: Tensor,
    images: Tensor | None = None,
) -> Tensor | None:
    """Where the attacker reached its goal, or ``None`` if ``objective`` defines no goal."""
    success = getattr(objective, "success", None)
    if success is None:
        return None
    return success(logits, features, labels, images=images)


def _misclassified(
    logits: Tensor, features: Tensor | None, labels: Tensor, images: Tensor | None = None
) -> Tensor:
    return logits.argmax(dim=1) != labels


class ClassificationLoss:
    """A loss of the classifier's logits against the label; succeeds on misclassification."""

    needs_images = False
    # A class loss needs a class: an unknown image's label -1 has none.
    accepts_unknown_labels = False

    def __init__(self, name: str, loss: Callable[[Tensor, Tensor], Tensor], doc: str) -> None:
        self.name = name
        self._loss = loss
        self.__doc__ = doc

    def __call__(self, logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
        return self._loss(logits, labels)

    success = staticmethod(_misclassified)

    def __repr__(self) -> str:
        return f"<objective {self.name}>"


def _largest_other_logit(logits: Tensor, labels: Tensor) -> Tensor:
    """``max_{j != y} l_j`` per sample."""
    is_label = F.one_hot(labels, logits.shape[1]).bool()
    return logits.masked_fill(is_label, -torch.inf).amax(dim=1)


def _label_logit(logits: Tensor, labels: Tensor) -> Tensor:
    return logits.gather(1, labels[:, None]).squeeze(1)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _margin(logits: Tensor, labels: Tensor) -> Tensor:
    return _largest_other_logit(logits, labels) - _label_logit(logits, labels)


def _dlr(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[1] < 3:
        raise ValueError(
            f"the DLR loss needs at least 3 classes, got {logits.shape[1]}; use margin instead"
        )
    top = logits.topk(3, dim=1).values
    return _margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


cross_entropy = ClassificationLoss(
    "ce",
    _cross_entropy,
    """Cross-entropy ``-log softmax(l)_y`` per sample (the paper's attack loss).""",
)

margin = ClassificationLoss(
    "margin",
    _margin,
    """Carlini-Wagner margin ``max_{j != y} l_j - l_y`` per sample (Carlini & Wagner,
    IEEE S&P 2017, https://arxiv.org/abs/1608.04644). Positive exactly where the image
    is misclassified; it does not saturate like cross-entropy.""",
)

dlr = ClassificationLoss(
    "dlr",
    _dlr,
    """Difference of logits ratio, untargeted (Croce & Hein, ICML 2020,
    https://arxiv.org/abs/2003.01690)::

        DLR(l, y) = (max_{j != y} l_j - l_y) / (l_pi1 - l_pi3)

    with ``l_pi1 >= l_pi2 >= l_pi3`` the sorted logits. This is the negative of the
    paper's DLR, so higher is better for the attacker as for every osad objective.
    Invariant to shifting and rescaling the logits, so a defence cannot hide behind
    their scale. Needs at least 3 classes (the splits of osad have 6 known classes).""",
)

OBJECTIVES: dict[str, ClassificationLoss] = {o.name: o for o in (cross_entropy, margin, dlr)}

DIRECTIONS = ("to_unknown", "to_known", "by_label")


def get_objective(name: str) -> ClassificationLoss:
    """A classification objective by its config name (``ce``, ``margin``, ``dlr``)."""
    if name not in OBJECTIVES:
        raise unknown_name("attack loss", name, OBJECTIVES)
    return OBJECTIVES[name]


class ScoreObjective:
    """Attack a fitted open-set :class:`~osad.openset.Scorer` (higher score = more unknown).

    With ``s(x)`` the score and a per-sample sign ``d``, the value is ``d * s(x)``:

    * ``"to_unknown"``: ``d = +1``, make a known image look unknown;
    * ``"to_known"``: ``d = -1``, make an unknown image look known;
    * ``"by_label"``: ``d = +1`` where the label is a class (``>= 0``), ``-1`` where it
      is ``-1`` (unknown), so one attack pushes both kinds of a mixed batch the wrong way.

    This is the adaptive attack on the detector that Azizmalayeri et al. (NeurIPS 2022,
    https://arxiv.org/abs/2210.14525) show breaks defended detectors. With a
    ``threshold`` (an image is rejected as unknown where ``s > threshold``), the attack
    succeeds where ``d * s > d * threshold``: a known image rejected, an unknown image
    accepted.
    """

    def __init__(
        self, scorer: Scorer, direction: str = "to_unknown", threshold: float | None = None
    ) -> None:
        if direction not in DIRECTIONS:
            raise unknown_name("score direction", direction, DIRECTIONS)
        self.scorer = scorer
        self.direction = direction
        self.threshold = threshold
        self.needs_images = scorer.needs_images
        self.accepts_unknown_labels = True

    def _sign(self, labels: Tensor, like: Tensor) -> Tensor | float:
        if self.direction == "by_label":
            return torch.where(labels >= 0, 1.0, -1.0).to(like.dtype)
        return 1.0 if self.direction == "to_unknown" else -1.0

    def __call__(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Tensor:
        score = self.scorer.score(logits, features, images)
        return self._sign(labels, score) * score

    def success(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Tensor | None:
        if self.threshold is None:
            return None
        sign = self._sign(labels, logits)
        return sign * self.scorer.score(logits, features, images) > sign * self.threshold

    def success_from_value(self, value: Tensor, labels: Tensor) -> Tensor | None:
        """:meth:`success` from this objective's own value ``d * s`` at the same point
        (``d * s > d * threshold``), so an attack that has the value does not compute the
        score a second time (for ODIN or reconstruction, more passes of the model)."""
        if self.threshold is None:
            return None
        return value > self._sign(labels, value) * self.threshold

    def __repr__(self) -> str:
        return (
            f"<objective score {self.scorer.name or type(self.scorer).__name__} {self.direction}>"
        )


def score_objective(
    scorer: Scorer, direction: str = "to_unknown", threshold: float | None = None
) -> ScoreObjective:
    """The objective that moves ``scorer``'s score in ``direction``; see :class:`ScoreObjective`."""
    return ScoreObjective(scorer, direction, threshold)


class JointObjective:
    """A weighted sum of a classification loss and a detection loss, per sample::

        value = [y >= 0] * classification(l, y) + weight * detection(l, z, y)

    The classification term applies to known images only (an unknown image, label
    -1, has no class to attack), so with ``detection = score_objective(s, "by_label")``
    one attack asks known images to be misclassified or rejected and unknown images
    to be accepted. Succeeds where either term reports success.
    """

    def __init__(self, classification: Objective, detection: Objective, weight: float = 1.0):
        self.classification = classification
        self.detection = detection
        self.weight = weight
        self.needs_images = getattr(classification, "needs_images", False) or getattr(
            detection, "needs_images", False
        )
        self.accepts_unknown_labels = True

    def __call__(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Tensor:
        known = labels >= 0
        # Unknown samples get a dummy class so the loss is finite; where() then drops
        # both their value and their gradient.
        cls = objective_values(self.classification, logits, features, labels.clamp(min=0), images)
        det = objective_values(self.detection, logits, features, labels, images)
        return torch.where(known, cls, torch.zeros_like(cls)) + self.weight * det

    def success(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Tensor | None:
        cls = objective_success(self.classification, logits, features, labels.clamp(min=0), images)
        det = objective_success(self.detection, logits, features, labels, images)
        if cls is not None:
            cls = cls & (labels >= 0)
        if cls is None or det is None:
            return cls if det is None else det
        return cls | det

    def __repr__(self) -> str:
        return f"<objective {self.classification!r} + {self.weight:g} * {self.detection!r}>"


def joint_objective(
    classification: Objective, detection: Objective, weight: float = 1.0
) -> JointObjective:
    """``classification + weight * detection`` per sample; see :class:`JointObjective`."""
    return JointObjective(classification, detection, weight)
