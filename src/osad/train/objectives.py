"""Training objectives: one per step, built from the method's parts.

All methods share one objective, whose parts follow the model:

* ``plain``: ``CE(C(E(x)), y)`` on clean images.
* ``pgd-at``, ``fd``: ``CE(C(E(x_adv)), y)`` with ``x_adv`` attacking the classifier.
* ``osdn``: with ``x_r = rot(x, r)`` a random quarter-turn rotation,
  ``x_adv`` attacking the classifier and ``x_r_adv`` attacking the rotation head,
  ``CE(C(z), y) + w_rot CE(R(E(x_r_adv)), r) + w_rec MSE(D(z), x)``, ``z = E(x_adv)``.

The two OSDN attacks run as one batched attack on ``[x; x_r]`` whose per-sample
loss is the classifier loss on the first half and the rotation loss on the
second. The model is in eval mode while attacking, so samples do not interact
and this equals two separate attacks. The encoder then runs once, in train
mode, over ``[x_adv; x_r_adv]``: BatchNorm normalises with the statistics of
the whole concatenated batch (2B images) instead of each half separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from osad.attacks import build_attack
from osad.attacks.objectives import Objective, cross_entropy
from osad.config import AttackConfig
from osad.data import rotate_batch
from osad.models import OpenSetNet


@dataclass
class StepLosses:
    loss: Tensor
    terms: dict[str, Tensor]
    logits: Tensor  # classifier logits of the (attacked) training images


def rotation_branch_objective(model: OpenSetNet, num_class_samples: int) -> Objective:
    """Classifier CE on the first ``num_class_samples`` samples, rotation CE on the rest."""

    def objective(logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
        n = num_class_samples
        assert features is not None and model.rotation_head is not None
        cls = F.cross_entropy(logits[:n], labels[:n], reduction="none")
        rot = F.cross_entropy(model.rotation_head(features[n:]), labels[n:], reduction="none")
        return torch.cat([cls, rot])

    return objective


class TrainObjective:
    """The loss of one training step; ``attack=None`` trains on clean images.

    ``generator`` (on the images' device) draws the rotations and the attack's
    random starts, so that a run owns, saves and restores this stream.
    """

    def __init__(
        self,
        attack: AttackConfig | None,
        reconstruction_weight: float = 1.0,
        rotation_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.attack = attack
        self.reconstruction_weight = reconstruction_weight
        self.rotation_weight = rotation_weight
        self.generator = generator

    def _attacked(self, model: OpenSetNet, x: Tensor, labels: Tensor, n: int) -> Tensor:
        if self.attack is None:
            return x
        objective = (
            rotation_branch_objective(model, n)
            if model.rotation_head is not None
            else cross_entropy
        )
        attack = build_attack(
            model, self.attack, objective=objective, select="last", generator=self.generator
        )
        return attack(x, labels)

    def __call__(self, model: OpenSetNet, x: Tensor, y: Tensor) -> StepLosses:
        b = x.shape[0]
        inputs, labels = x, y
        if model.rotation_head is not None:
            x_rot, r = rotate_batch(x, self.generator)
            inputs, labels = torch.cat([x, x_rot]), torch.cat([y, r])
        z = model.encode(self._attacked(model, inputs, labels, b))
        logits = model.classifier(z[:b])
        terms = {"ce": F.cross_entropy(logits, y)}
        loss = terms["ce"]
        if model.rotation_head is not None:
            terms["rotation"] = F.cross_entropy(model.rotation_head(z[b:]), labels[b:])
            loss = loss + self.rotation_weight * terms["rotation"]
        if model.decoder is not None:
            terms["reconstruction"] = F.mse_loss(model.decoder(z[:b]), x)
            loss = loss + self.reconstruction_weight * terms["reconstruction"]
        return StepLosses(loss, terms, logits)
