"""Loss terms: a training method's objective is the weighted sum of its terms.

One step of one network (:class:`NetworkPass`) sees its clean batch ``x, y``
(``B`` images), the inputs it trained on (``x`` or, for a network with the
training attack, ``x_adv``; with a rotation head also the rotated branch
``x_r`` or ``x_r_adv``, so ``2B`` inputs), the encoder's features ``z`` of those
inputs in train mode and the classifier's logits of the first ``B``. A term maps
that to a scalar; the objective (:class:`osad.train.objectives.TrainObjective`)
adds ``weight * term`` in the order the method lists them. Each term says
which ``train.*`` key weighs it (1 when none), which switch turns it off (the
ablations ``train.reconstruction=false``, ``train.self_supervision=false``) and
which model part it needs (the method's model gets exactly the parts its
enabled terms need).

Adding a defence is a term and a method entry (:data:`osad.methods.METHODS`).
TRADES (Zhang et al., ICML 2019, https://arxiv.org/abs/1901.08573), say, whose
outer loss is ``CE(f(x), y) + beta KL(f(x) || f(x_adv))``, would be::

    @dataclass(frozen=True)
    class TradesKL(Term):
        name: ClassVar[str] = "trades_kl"
        weight_key: ClassVar[str | None] = "trades_beta"  # a new train.* key

        def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
            clean = p.model.classifier(p.model.encode(p.x))
            return softened_kl(p.logits, clean.detach())

    Method(
        name="trades",
        description="TRADES (Zhang et al. 2019): clean CE + beta KL to the attacked images",
        networks=(NetworkSpec(attack=True, terms=(CleanCE(), TradesKL())),),
    )

with ``CleanCE`` the cross-entropy of ``p.model.classifier(p.model.encode(p.x))``
and the inner maximisation the training attack's ``train.attack.loss`` (a KL
objective registered in :mod:`osad.attacks.objectives`). MART (Wang et al., ICLR
2020) is likewise a boosted cross-entropy term and a KL term weighted by
``1 - p_y(x)``, and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from osad.models import OpenSetNet


@dataclass
class NetworkPass:
    """One network's forward pass on one step (see the module docstring)."""

    model: OpenSetNet
    x: Tensor  # clean images of the batch, (B, C, H, W) in [0, 1]
    y: Tensor  # their labels, (B,)
    inputs: Tensor  # what the network trained on: (B or 2B, C, H, W)
    labels: Tensor  # their labels: y, then the rotations r of the rotated branch
    features: Tensor  # encoder output on ``inputs``, (B or 2B, latent_dim)
    logits: Tensor  # classifier logits of ``features[:B]``, (B, num_classes)

    @property
    def batch(self) -> int:
        return self.x.shape[0]


# Logits, (B, num_classes), of the step's network of that name on its inputs (a constant).
Teacher = Callable[[str], Tensor]


def softened_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch;
    the teacher's logits are a constant."""
    t = temperature
    log_student = F.log_softmax(student / t, dim=1)
    target = F.softmax(teacher.detach() / t, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean") * t * t


@dataclass(frozen=True)
class Term:
    """A loss term; subclasses set the class variables and ``__call__``."""

    name: ClassVar[str]  # its key in the step's terms and in history.jsonl (train_<name>)
    part: ClassVar[str | None] = None  # the model part it needs: "decoder", "rotation_head"
    weight_key: ClassVar[str | None] = None  # train.* key of its weight; None: weight 1
    switch_key: ClassVar[str | None] = None  # train.* switch that turns it off

    def enabled(self, train: Any) -> bool:
        """Whether ``train`` (a :class:`osad.config.TrainConfig`) keeps this term."""
        return self.switch_key is None or bool(getattr(train, self.switch_key))

    def weight(self, train: Any) -> float:
        return 1.0 if self.weight_key is None else float(getattr(train, self.weight_key))

    def configured(self, train: Any) -> Term:
        """This term with the settings it reads from ``train`` (none by default)."""
        return self

    def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ClassificationCE(Term):
    """``CE(C(z), y)`` on the network's inputs: clean images, or attacked ones for a
    network trained on the training attack."""

    name: ClassVar[str] = "ce"

    def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
        return F.cross_entropy(p.logits, p.y)


@dataclass(frozen=True)
class RotationCE(Term):
    """OSDN's self-supervision: ``CE(R(E(x_r)), r)``, the rotation head's loss on the
    rotated branch (random quarter turns ``r``, attacked against the rotation head)."""

    name: ClassVar[str] = "rotation"
    part: ClassVar[str | None] = "rotation_head"
    weight_key: ClassVar[str | None] = "rotation_weight"
    switch_key: ClassVar[str | None] = "self_supervision"

    def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
        b = p.batch
        return F.cross_entropy(p.model.rotation_head(p.features[b:]), p.labels[b:])


@dataclass(frozen=True)
class Reconstruction(Term):
    """OSDN's denoising decoder: ``MSE(D(z), x)``, the clean image decoded from the
    features of its (attacked) version."""

    name: ClassVar[str] = "reconstruction"
    part: ClassVar[str | None] = "decoder"
    weight_key: ClassVar[str | None] = "reconstruction_weight"
    switch_key: ClassVar[str | None] = "reconstruction"

    def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
        return F.mse_loss(p.model.decoder(p.features[: p.batch]), p.x)


@dataclass(frozen=True)
class MutualKL(Term):
    """Mutual learning (OSDN-CAML): ``KL_T(teacher || student)`` between the logits of
    network ``teacher`` and this network's, ``T = train.mutual_temperature``
    (see :func:`softened_kl`). The teacher's logits are those of the same step: its
    training pass when it updates later, its prediction refreshed after its update when
    it updated earlier (:class:`osad.train.turns.NetworksInTurn`)."""

    teacher: str
    temperature: float = 1.0
    name: ClassVar[str] = "kl"
    weight_key: ClassVar[str | None] = "mutual_weight"

    def configured(self, train: Any) -> Term:
        return replace(self, temperature=train.mutual_temperature)

    def __call__(self, p: NetworkPass, teacher: Teacher) -> Tensor:
        return softened_kl(p.logits, teacher(self.teacher), self.temperature)
