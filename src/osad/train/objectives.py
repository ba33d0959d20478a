"""Training objectives: one per step, built from the method's parts.

All methods share one objective, whose parts follow the model:

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from osad.attacks import build_attack
from osad.attacks.objectives import Objective, cross_entropy, get_objective
from osad.config import AttackConfig
from osad.data import rotate_batch
from osad.models import OpenSetNet


@dataclass
class StepLosses:
    loss: Tensor
    terms: dict[str, Tensor]
    logits: Tensor  # classifier logits of the (attacked) training images


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
        *,
        fused_branches: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.attack = attack
        self.reconstruction_weight = reconstruction_weight
        self.rotation_weight = rotation_weight
        self.fused_branches = fused_branches
        self.generator = generator

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

    def __call__(self, model: OpenSetNet, x: Tensor, y: Tensor) -> StepLosses:
        return self.losses(model, x, y, *self.attacked_inputs(model, x, y))

    def losses(
        self, model: OpenSetNet, x: Tensor, y: Tensor, inputs: Tensor, labels: Tensor
    ) -> StepLosses:
        """The step's losses on the clean batch ``x, y`` and its attacked ``inputs, labels``."""
        b = x.shape[0]
        z = self._encode(model, inputs, b)
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
