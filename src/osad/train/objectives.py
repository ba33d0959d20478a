"""The training objective of one network: its inputs (attacked or not) and its terms.

Every method's networks share one objective, whose parts follow the network's
entry in :data:`osad.methods.METHODS` (the loss terms of
:mod:`osad.methods.terms`, weighted):

* ``plain``: ``CE(C(E(x)), y)`` on clean images.
* ``pgd-at``, ``fd``: ``CE(C(E(x_adv)), y)`` with ``x_adv`` attacking the classifier.
* ``osdn``: with ``x_r = rot(x, r)`` a random quarter-turn rotation,
  ``x_adv`` attacking the classifier and ``x_r_adv`` attacking the rotation head,
  ``CE(C(z), y) + w_rot CE(R(E(x_r_adv)), r) + w_rec MSE(D(z), x)``, ``z = E(x_adv)``.

The training attack maximises the loss that ``train.attack.loss`` names
(cross-entropy by default) on both the classifier and the rotation head.
The two OSDN attacks run as one batched attack on ``[x; x_r]`` whose per-sample
loss is the classifier loss on the first half and the rotation loss on the
second. The model is in eval mode while attacking, so samples do not interact
and this equals two separate attacks.

The encoder then runs in train mode over the attacked images, in one of two forms:

* ``fused_branches=True`` (default, ``train.fused_branches``): once over
  ``[x_adv; x_r_adv]``. BatchNorm normalises both halves with the statistics of
  the whole 2B-image batch and updates its running statistics once, with them.
* ``fused_branches=False``: once per branch, as the authors' code does. Each
  half is normalised with its own batch statistics and the running statistics
  are updated twice (momentum applied per branch).

The two forms give the same attacks and, in eval mode, the same losses; in
train mode the losses differ only through those batch statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from osad.attacks import build_attack
from osad.attacks.objectives import Objective, cross_entropy, get_objective
from osad.config import AttackConfig, Config
from osad.data import rotate_batch
from osad.errors import ConfigError
from osad.methods import METHODS
from osad.methods.terms import ClassificationCE, NetworkPass, Teacher, Term
from osad.models import OpenSetNet
from osad.rundir import MAIN


@dataclass
class StepLosses:
    loss: Tensor
    terms: dict[str, Tensor]
    logits: Tensor  # classifier logits of the (attacked) training images
    inputs: Tensor  # the (attacked) training images those logits are of


def rotation_branch_objective(
    model: OpenSetNet, num_class_samples: int, loss: Objective = cross_entropy
) -> Objective:
    """``loss`` of the classifier on the first ``num_class_samples`` samples, of the
    rotation head on the rest."""

    def objective(logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
        n = num_class_samples
        assert features is not None and model.rotation_head is not None
        cls = loss(logits[:n], None, labels[:n])
        rot = loss(model.rotation_head(features[n:]), None, labels[n:])
        return torch.cat([cls, rot])

    return objective


def _no_teacher(name: str) -> Tensor:
    raise ConfigError(f"a loss term asks for network {name!r}, which this step does not train")


class TrainObjective:
    """The loss of one network's training step: the weighted sum of ``terms`` (pairs of
    a :class:`~osad.methods.terms.Term` and its weight, in order) on its inputs, attacked
    with ``attack`` (``None``: clean images).

    ``generator`` (on the images' device) draws the rotations and the attack's
    random starts, so that a run owns, saves and restores this stream.
    """

    def __init__(
        self,
        attack: AttackConfig | None,
        terms: Sequence[tuple[Term, float]] = ((ClassificationCE(), 1.0),),
        *,
        fused_branches: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.attack = attack
        self.terms = tuple(terms)
        self.fused_branches = fused_branches
        self.generator = generator

    @classmethod
    def for_network(
        cls, config: Config, network: str = MAIN, *, generator: torch.Generator | None = None
    ) -> TrainObjective:
        """The objective of network ``network`` of ``config.method``: the training attack
        if the network trains on it, the terms ``config.train`` keeps, weighted."""
        spec = METHODS[config.method].network(network)
        t = config.train
        return cls(
            t.attack if spec.attack else None,
            spec.terms_for(t),
            fused_branches=t.fused_branches,
            generator=generator,
        )

    def attacked_inputs(self, model: OpenSetNet, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training images and their labels, attacked: ``[x_adv; x_r_adv]`` and
        ``[y; r]`` for OSDN (random rotations ``r``), else ``x_adv`` and ``y``."""
        b = x.shape[0]
        inputs, labels = x, y
        if model.rotation_head is not None:
            x_rot, r = rotate_batch(x, self.generator)
            inputs, labels = torch.cat([x, x_rot]), torch.cat([y, r])
        if self.attack is None:
            return inputs, labels
        objective = None  # the classifier loss the config names
        if model.rotation_head is not None:
            loss = get_objective(self.attack.resolved().loss)
            objective = rotation_branch_objective(model, b, loss)
        attack = build_attack(
            model, self.attack, objective=objective, select="last", generator=self.generator
        )
        return attack(inputs, labels), labels

    def _encode(self, model: OpenSetNet, inputs: Tensor, b: int) -> Tensor:
        if self.fused_branches or inputs.shape[0] == b:
            return model.encode(inputs)
        return torch.cat([model.encode(inputs[:b]), model.encode(inputs[b:])])

    def forward(self, model: OpenSetNet, x: Tensor, y: Tensor) -> NetworkPass:
        """``model``'s pass over the clean batch ``x, y``: attack, then encode in train mode."""
        return self.forward_on(model, x, y, *self.attacked_inputs(model, x, y))

    def forward_on(
        self, model: OpenSetNet, x: Tensor, y: Tensor, inputs: Tensor, labels: Tensor
    ) -> NetworkPass:
        """``model``'s pass over given (attacked) ``inputs, labels`` of the batch ``x, y``."""
        z = self._encode(model, inputs, x.shape[0])
        return NetworkPass(model, x, y, inputs, labels, z, model.classifier(z[: x.shape[0]]))

    def losses(self, p: NetworkPass, teacher: Teacher = _no_teacher) -> StepLosses:
        """The weighted sum of the terms on pass ``p``; ``teacher`` gives other networks'
        logits to the terms that need them (mutual learning)."""
        terms: dict[str, Tensor] = {}
        loss: Tensor | None = None
        for term, weight in self.terms:
            value = terms[term.name] = term(p, teacher)
            loss = weight * value if loss is None else loss + weight * value
        assert loss is not None, "a method's network has at least one term"
        return StepLosses(loss, terms, p.logits, p.inputs[: p.batch])

    def __call__(self, model: OpenSetNet, x: Tensor, y: Tensor) -> StepLosses:
        return self.losses(self.forward(model, x, y))
