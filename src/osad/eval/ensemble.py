"""The ensemble: a parameter-free, per-sample worst-case open-set robustness evaluation.

The open-set analogue of AutoAttack (Croce & Hein, ICML 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", https://arxiv.org/abs/2003.01690). A *version*
(:data:`VERSIONS`) is a fixed list of members; each member is an attack of the
registry :data:`osad.attacks.ATTACKS` (APGD, which has no step size, or the
black-box Square attack) on one objective, with a fixed number of steps or
queries. Budget (eps, norm) comes from the caller; nothing else is set.

Members attack the test images in the table's order, and every point a member
returns is offered to every metric. Per sample the ensemble keeps

* for accuracy (known images): the point with the lowest correct-class margin
  ``l_y - max_{j != y} l_j`` (a misclassified point first);
* for each score: the point with the highest score for a known image (most
  unknown-looking), the lowest for an unknown image;

starting from the clean image itself, so a worst case is never better than
clean: an image counts as correct, accepted or rejected only if it is so clean
*and* under every member (AutoAttack's convention). A member attacks only the
samples not yet broken for the metric it targets (a known image misclassified;
for a score, an image ranked wrongly against every image of the other side and,
at the clean-validation threshold, a known image rejected or an unknown one
accepted), so no queries go to samples already broken. A point whose outputs
are not finite is never kept; such samples are counted.

Members come in four kinds:

* ``closed``: the classifier (APGD-CE, APGD-DLR, targeted APGD on the margin,
  Square on the margin), known images with their true labels;
* ``unknown``: unknown images pulled into a known class: the targeted margin
  towards each of their highest clean classes in turn, maximised to the end of
  the run (a confident member of a class is what every confidence score accepts);
* ``surrogate``: detector objectives that do not use any score's own gradient,
  in logit and latent space (distance to the nearest class mean, max logit,
  the top-2 margin, energy); run once, their points are offered to every score;
* ``score``: per score, APGD on the score itself, APGD on a smooth surrogate of
  the same score (OpenMax and KNN, whose own gradients are flat or piecewise),
  and Square on the score.

Detector objectives push known images to look unknown and unknown images to
look known (:func:`osad.attacks.score_objective` with ``"by_label"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from osad.attacks import get_objective, score_objective
from osad.attacks import margin as margin_loss
from osad.attacks.objectives import ScoreObjective
from osad.attacks.versions import KINDS, VERSIONS, Member, describe, get_version
from osad.config import AttackConfig
from osad.distributed import derive_seed
from osad.openset import KNN, OpenMax, Scorer, make_scorer
from osad.openset.openmax import DISTANCES

# ---------------------------------------------------------------------------
# Surrogate detector objectives: Scorers (higher = more unknown) that are attacked,
# never reported.


def class_means(values: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
    """Mean of ``values`` (N, D) over the correctly classified images of each class,
    (K, D); a class without any falls back on all its images (as OpenMax's fit)."""
    correct = logits.argmax(dim=1) == labels
    means = []
    for c in range(logits.shape[1]):
        chosen = (labels == c) & correct
        if not chosen.any():
            chosen = labels == c
        means.append(values[chosen].double().mean(dim=0))
    return torch.stack(means)


class NearestClassMean(Scorer):
    """Distance to the nearest class mean activation vector, in logit space
    (``latent=False``) or latent space: far from every class = unknown.

    Fitted on the training outputs; the means are those of OpenMax's fit (Bendale &
    Boult, CVPR 2016, https://arxiv.org/abs/1511.06233), without the Weibull model,
    so the gradient never vanishes.
    """

    def __init__(self, latent: bool) -> None:
        self.latent = latent
        self.needs_features = latent
        self.name = "mav-latent" if latent else "mav"
        self.means: Tensor | None = None

    def fit(self, logits, features, labels, images=None) -> NearestClassMean:
        values = features if self.latent else logits
        self.means = class_means(values.detach().cpu(), labels.cpu(), logits.detach().cpu())
        return self

    def score(self, logits, features=None, images=None) -> Tensor:
        values = features if self.latent else logits
        means = self.means.to(device=values.device, dtype=values.dtype)
        return torch.cdist(values, means, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)


class Entropy(Scorer):
    """The entropy of the softmax: spread over the classes = unknown. Smooth everywhere,
    so it flattens a known image's probabilities where the maximum's gradient switches
    class at every tie."""

    name = "entropy"

    def score(self, logits, features=None, images=None) -> Tensor:
        log_p = logits.log_softmax(dim=1)
        return -(log_p.exp() * log_p).sum(dim=1)


class TopTwoMargin(Scorer):
    """Minus the gap between the two largest logits: low confidence = unknown."""

    name = "top2-margin"

    def score(self, logits, features=None, images=None) -> Tensor:
        top = logits.topk(2, dim=1).values
        return top[:, 1] - top[:, 0]


class SmoothOpenMax(Scorer):
    """A smooth surrogate of a fitted OpenMax score (either variant).

    Near its median the fitted Weibull CDF of class c is a Gumbel CDF in the
    distance, with location ``d0_c = scale_c - translate + small_c`` and width
    ``beta_c = scale_c / shape_c``; the score's weights ``1 - CDF`` are 0 past a few
    widths, where the score is flat at ``-log K`` and its gradient zero (or NaN).
    The surrogate keeps the form of the score with the weight moved into the
    exponent as a log-sigmoid, linear in the distance far from the class::

        s~(l) = -log sum_c exp(l_c + log sigmoid((d0_c - d(l, MAV_c)) / beta_c))

    so its gradient pulls an unknown image towards the nearest class mean (and a
    known one away from all) wherever it sits.
    """

    name = "smooth-openmax"

    def __init__(self, openmax: OpenMax) -> None:
        weibull = openmax.weibull
        scale = torch.as_tensor(weibull.scale, dtype=torch.float64)
        self.location = scale - weibull.translate + torch.as_tensor(weibull.small_score)
        self.width = scale / torch.as_tensor(weibull.shape, dtype=torch.float64)
        self.mav = openmax.mav
        self.distance = DISTANCES[openmax.distance]

    def score(self, logits, features=None, images=None) -> Tensor:
        kw = dict(device=logits.device, dtype=logits.dtype)
        d = self.distance(logits, self.mav.to(**kw))
        keep = F.logsigmoid((self.location.to(**kw) - d) / self.width.to(**kw))
        return -torch.logsumexp(logits + keep, dim=1)


class SmoothKNN(Scorer):
    """A smooth surrogate of a fitted KNN score: the mean distance to the ``k`` nearest
    normalised training features instead of the distance to the ``k``-th alone, so
    the gradient comes from ``k`` neighbours and changes less where the ranking does."""

    name = "smooth-knn"
    needs_features = True

    def __init__(self, knn: KNN) -> None:
        self.knn = knn

    def score(self, logits, features=None, images=None) -> Tensor:
        bank = self.knn.bank.to(device=features.device, dtype=features.dtype)
        similarity = F.normalize(features, dim=1) @ bank.T
        top = similarity.topk(self.knn.effective_k, dim=1).values
        return (2 - 2 * top).clamp_min(1e-12).sqrt().mean(dim=1)


SURROGATES: dict[str, Callable[[], Scorer]] = {
    "mav": lambda: NearestClassMean(latent=False),
    "mav-latent": lambda: NearestClassMean(latent=True),
    "maxlogit": lambda: make_scorer("maxlogit"),
    "top2-margin": TopTwoMargin,
    "entropy": Entropy,
    "energy": lambda: make_scorer("energy"),
}

# The scores with a flat or piecewise gradient, and their smooth surrogates.
SMOOTH: dict[type[Scorer], Callable[[Any], Scorer]] = {OpenMax: SmoothOpenMax, KNN: SmoothKNN}


def smooth_surrogate(scorer: Scorer) -> Scorer | None:
    """The smooth surrogate of a fitted ``scorer``, or ``None`` if it needs none."""
    for kind, make in SMOOTH.items():
        if isinstance(scorer, kind):
            return make(scorer)
    return None


class SurrogateObjective(ScoreObjective):
    """A surrogate pushed the wrong way per image (``by_label``), whose success is judged
    on the true score at its threshold: the attack prefers points that fool the detector
    under test, whatever the surrogate says."""

    success_from_value = None  # the value is the surrogate's, success the true score's

    def __init__(self, surrogate: Scorer, scorer: Scorer, threshold: float | None) -> None:
        super().__init__(surrogate, "by_label")
        self.true = score_objective(scorer, "by_label", threshold)
        self.needs_images = surrogate.needs_images or scorer.needs_images

    def success(self, logits, features, labels, images=None) -> Tensor | None:
        return self.true.success(logits, features, labels, images)


class TargetedMargin:
    """``l_t - max_{j != t} l_j`` for the target class ``t`` given as the label: maximised,
    the image moves towards class ``t`` (Carlini & Wagner's targeted loss, as the
    targeted APGD of AutoAttack). Succeeds where ``t`` wins (``stop_at_success``;
    otherwise the attack never stops early and keeps the highest margin)."""

    needs_images = False
    accepts_unknown_labels = False

    def __init__(self, stop_at_success: bool = True) -> None:
        if not stop_at_success:
            self.success = None  # no goal: the highest margin is the best point

    def __call__(self, logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
        return -margin_loss(logits, features, labels)

    def success(self, logits, features, labels, images=None) -> Tensor:
        return logits.argmax(dim=1) == labels

    def __repr__(self) -> str:
        return "<objective targeted margin>"


class TargetedLogProbability(TargetedMargin):
    """``log p_t``, the log-softmax of the target class ``t`` given as the label: maximised,
    every other class is pushed down, not only the runner-up (targeted cross-entropy)."""

    def __call__(self, logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
        return logits.log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)

    def __repr__(self) -> str:
        return "<objective targeted log-probability>"


# The objectives of the ``unknown`` members, maximised to the end of the run.
UNKNOWN_OBJECTIVES: dict[str, Callable[[], TargetedMargin]] = {
    "margin": lambda: TargetedMargin(stop_at_success=False),
    "ce": lambda: TargetedLogProbability(stop_at_success=False),
}


# ---------------------------------------------------------------------------
# Per-sample worst case


def true_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``l_y - max_{j != y} l_j`` per sample (negative = misclassified)."""
    return -margin_loss(logits, None, labels.clamp(min=0))


class WorstCase:
    """Per sample, the worst point seen so far for accuracy and for each score.

    Source 0 is the clean image; source ``i`` the ``i``-th member offered.
    """

    def __init__(
        self,
        logits: Tensor,
        scores: dict[str, Tensor],
        labels: Tensor,
        thresholds: dict[str, float | None],
    ) -> None:
        self.labels = labels
        self.is_known = labels >= 0
        self.thresholds = thresholds
        self.logits = logits.clone()
        self.margin = torch.where(self.is_known, true_margin(logits, labels), torch.inf)
        self.source = torch.zeros(len(labels), dtype=torch.long)
        self.scores = {s: v.clone() for s, v in scores.items()}
        self.score_logits = {s: logits.clone() for s in scores}
        self.score_source = {s: torch.zeros(len(labels), dtype=torch.long) for s in scores}
        self.sources = ["clean"]
        self.attacked: dict[str, int] = {}
        self.non_finite: dict[str, int] = {}

    def misclassified(self) -> Tensor:
        return self.is_known & (self.logits.argmax(dim=1) != self.labels)

    def detected_wrong(self, score: str) -> Tensor:
        """Samples ``score`` gets wrong in every way an attack could still worsen: ranked
        wrongly against every image of the other side (a known image scored above every
        unknown one, an unknown image below every known one: no pair left for AUROC) and,
        with a threshold, a known image rejected, an unknown image accepted."""
        values, known = self.scores[score], self.is_known
        highest_unknown = values[~known].max() if (~known).any() else -torch.inf
        lowest_known = values[known].min() if known.any() else torch.inf
        wrong = torch.where(known, values > highest_unknown, values < lowest_known)
        threshold = self.thresholds[score]
        if threshold is not None:
            rejected = values > threshold
            wrong &= torch.where(known, rejected, ~rejected)
        return wrong

    def broken_everywhere(self) -> Tensor:
        """Samples broken for every metric: accuracy (known images) and every score."""
        broken = self.misclassified() | ~self.is_known
        for score in self.scores:
            broken &= self.detected_wrong(score)
        return broken

    def offer(self, member: str, index: Tensor, logits: Tensor, scores: dict[str, Tensor]) -> None:
        """The outputs of ``member`` at the samples ``index``: ``logits`` (n, K) and each
        score (n,); kept per sample and metric where worse than the held point."""
        source = len(self.sources)
        self.sources.append(member)  # a member may give several sources (one per score)
        self.attacked[member] = self.attacked.get(member, 0) + len(index)
        finite = torch.isfinite(logits).all(dim=1)
        for values in scores.values():
            finite &= torch.isfinite(values)
        self.non_finite[member] = self.non_finite.get(member, 0) + int((~finite).sum())
        known = self.is_known[index]
        labels = self.labels[index]
        margin = true_margin(logits, labels)
        wrong = logits.argmax(dim=1) != labels
        held_wrong = self.logits[index].argmax(dim=1) != labels
        held = self.margin[index]
        better = (wrong & ~held_wrong) | ((wrong == held_wrong) & (margin < held))
        better &= known & finite
        self.source[index[better]] = source
        self.logits[index[better]] = logits[better]
        self.margin[index[better]] = margin[better]
        for name, values in scores.items():
            held = self.scores[name][index]
            better = torch.where(known, values > held, values < held) & finite
            self.score_source[name][index[better]] = source
            self.scores[name][index[better]] = values[better]
            self.score_logits[name][index[better]] = logits[better]

    def results(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(logits, scores) per score: a known image's logits are its accuracy-worst
        point, an unknown image's those at its score-worst point."""
        known = self.is_known[:, None]
        logits = {s: torch.where(known, self.logits, self.score_logits[s]) for s in self.scores}
        return logits, {s: v.clone() for s, v in self.scores.items()}

    def decisive(self) -> dict[str, dict[str, int]]:
        """Per metric (``accuracy`` over known images, each score over all images), how
        many samples' kept point each member gave (``clean``: none made it worse)."""

        def counts(source: Tensor) -> dict[str, int]:
            tally: dict[str, int] = {}
            for i in source.tolist():
                tally[self.sources[i]] = tally.get(self.sources[i], 0) + 1
            return tally

        result = {"accuracy": counts(self.source[self.is_known])}
        result.update({s: counts(v) for s, v in self.score_source.items()})
        return result


# ---------------------------------------------------------------------------
# Running a version


def run_ensemble(
    version: str,
    base: AttackConfig,
    scorers: dict[str, Scorer],
    thresholds: dict[str, float | None],
    clean: tuple[Tensor, dict[str, Tensor]],
    train: tuple[Tensor, Tensor | None, Tensor],
    images: Tensor,
    labels: Tensor,
    outputs: Callable[..., Any],
    score: Callable[[str, Any], Tensor],
    seed: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """Attack the test set with every member of ``version``; per-sample worst case.

    Args:
        version: a key of :data:`VERSIONS`.
        base: the budget (``eps`` in 1/255, ``norm``) every member attacks at.
        scorers: the fitted scorers of the test, by name; ``thresholds`` their
            acceptance thresholds (score at 95% of the clean known validation
            images; ``None`` without validation images: skipping then rests on the
            ranking alone).
        clean: the clean test logits (N, K) and scores per score (N,), on CPU.
        train: the clean training (logits, features or None, labels) the surrogates
            are fitted on (class means).
        images, labels: the test images (N, C, H, W) and labels (N,; -1 unknown).
        outputs: ``outputs(images, labels, attack_config, seed, desc, objective)``
            giving the model's :class:`~osad.attacks.outputs.Outputs` under attack.
        score: ``score(name, outputs)``, the score ``name`` of some outputs, on CPU.
        seed: the evaluation's seed; each member's attack is seeded from it.

    Returns:
        (logits, scores) per score, each over all N test images (see
        :meth:`WorstCase.results`), and the report: version, members, per metric the
        decisive member counts, per member the samples attacked, those whose kept outputs
        were non-finite, and those whose search met a non-finite objective or gradient.
    """
    members = get_version(version)
    cpu_labels = labels.cpu()
    worst = WorstCase(clean[0], clean[1], cpu_labels, thresholds)
    train_logits, train_features, train_labels = train
    surrogates = {}
    for name in dict.fromkeys(m.objective for m in members if m.kind == "surrogate"):
        if name == "mav-latent" and train_features is None:
            continue  # a model without latent features
        surrogates[name] = SURROGATES[name]().fit(train_logits, train_features, train_labels)
    is_known = worst.is_known
    runs = 0
    # samples whose search met a non-finite objective value or gradient, per member:
    # their kept points are finite, so only the attack knows it searched blind there
    nonfinite_gradients: dict[str, int] = {}

    def attack(member: Member, desc: str, active: Tensor, objective, targets=None) -> None:
        nonlocal runs
        runs += 1  # each run its own seed, in the table's fixed order
        index = active.nonzero().squeeze(1)
        if len(index) == 0:
            return
        device_index = index.to(images.device)
        y = labels[device_index] if targets is None else targets[index].to(labels.device)
        config = AttackConfig(
            name=member.attack, norm=base.norm, eps=base.eps, params=member.params
        )
        out = outputs(images[device_index], y, config, derive_seed(seed, runs), desc, objective)
        count = 0 if out.nonfinite is None else int(out.nonfinite.sum())
        nonfinite_gradients[member.name] = nonfinite_gradients.get(member.name, 0) + count
        worst.offer(member.name, index, out.logits.cpu(), {s: score(s, out) for s in scorers})

    for member in members:
        if member.kind == "closed":
            if member.targets:
                # the classes other than the label, highest clean logit first (as AutoAttack)
                order = clean[0].argsort(dim=1, descending=True)
                others = order[order != cpu_labels.clamp(min=0)[:, None]].view(len(order), -1)
                for rank in range(min(member.targets, others.shape[1])):
                    active = is_known & ~worst.misclassified()
                    desc = f"ensemble {member.name} target {rank + 1}"
                    attack(member, desc, active, TargetedMargin(), others[:, rank])
                continue
            objective = get_objective(member.objective)
            attack(member, f"ensemble {member.name}", is_known & ~worst.misclassified(), objective)
        elif member.kind == "unknown":
            # an unknown image made a confident member of each of its top clean classes
            order = clean[0].argsort(dim=1, descending=True)
            for rank in range(min(member.targets, order.shape[1])):
                active = ~is_known & ~worst.broken_everywhere()
                desc = f"ensemble {member.name} target {rank + 1}"
                objective = UNKNOWN_OBJECTIVES[member.objective]()
                attack(member, desc, active, objective, order[:, rank])
        elif member.kind == "surrogate":
            if member.objective not in surrogates:
                continue
            objective = score_objective(surrogates[member.objective], "by_label")
            attack(member, f"ensemble {member.name}", ~worst.broken_everywhere(), objective)
        else:
            for name, scorer in scorers.items():
                threshold = thresholds[name]
                if member.objective == "smooth":
                    surrogate = smooth_surrogate(scorer)
                    if surrogate is None:
                        continue
                    objective = SurrogateObjective(surrogate, scorer, threshold)
                else:
                    objective = score_objective(scorer, "by_label", threshold)
                desc = f"ensemble {member.name} on {name}"
                attack(member, desc, ~worst.detected_wrong(name), objective)
    logits, scores = worst.results()
    report = {
        "version": version,
        "members": [m.name for m in members],
        "decisive": worst.decisive(),
        "attacked": worst.attacked,
        "non_finite": worst.non_finite,
        "nonfinite_gradients": nonfinite_gradients,
    }
    return logits, scores, report


__all__ = [
    "KINDS",
    "SMOOTH",
    "SURROGATES",
    "UNKNOWN_OBJECTIVES",
    "VERSIONS",
    "Entropy",
    "Member",
    "NearestClassMean",
    "SmoothKNN",
    "SmoothOpenMax",
    "SurrogateObjective",
    "TargetedLogProbability",
    "TargetedMargin",
    "TopTwoMargin",
    "WorstCase",
    "describe",
    "get_version",
    "run_ensemble",
]
