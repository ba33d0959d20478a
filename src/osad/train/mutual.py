"""Clean-adversarial mutual learning (CAML) of OSDN-CAML.

Shao, Perera, Yuen and Patel, "Open-set Adversarial Defense with
Clean-Adversarial Mutual Learning", IJCV 2022, https://arxiv.org/abs/2202.05953.
A peer network ``P`` (the plain ResNet of the same family: no denoising blocks,
decoder or rotation head) classifies the clean images ``x`` while OSDN ``O``
classifies their attacked versions ``x_adv``; each learns from the other's
softened prediction. With ``p_T(z) = softmax(z / T)`` and
``KL_T(t || s) = T^2 KL(p_T(t) || p_T(s))`` averaged over the batch, one step is:

1. OSDN step on ``L_OSDN + w KL_T(P(x) || O(x_adv))``, with ``P(x)`` a constant;
2. peer step on ``CE(P(x), y) + w KL_T(O'(x_adv) || P(x))``, with ``O'`` OSDN
   after its step (its refreshed prediction, a constant), the paper's order.

``w`` is ``train.mutual_weight`` (2 in the paper) and ``T``
``train.mutual_temperature`` (1: the authors' code applies no temperature;
``T^2`` keeps the gradient scale of Hinton et al. 2015 for other values). Both
networks run in train mode, with batch statistics; the refreshed OSDN pass
leaves OSDN's BatchNorm running statistics alone (they were updated by its
training pass already). Each network has its own optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osad.train.functional import call_with
from osad.train.objectives import StepLosses, TrainObjective

# optimizer, loss, which network: one checked optimisation step (the loop's).
ApplyStep = Callable[[torch.optim.Optimizer, Tensor, str], None]


def softened_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch;
    the teacher's logits are a constant."""
    t = temperature
    log_student = F.log_softmax(student / t, dim=1)
    target = F.softmax(teacher.detach() / t, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean") * t * t


class MutualLearning:
    """The peer network, its optimizer and one clean-adversarial mutual-learning step."""

    def __init__(
        self,
        peer: nn.Module,
        optimizer: torch.optim.Optimizer,
        weight: float = 2.0,
        temperature: float = 1.0,
    ) -> None:
        self.peer, self.optimizer = peer, optimizer
        self.weight, self.temperature = weight, temperature

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: TrainObjective,
        x: Tensor,
        y: Tensor,
        apply: ApplyStep,
    ) -> StepLosses:
        """Update OSDN, then the peer, on the clean batch ``x, y``; returns OSDN's losses
        with the KL terms and the peer's losses among the terms."""
        out = objective(model, x, y)
        peer_logits = self.peer(x)
        kl = softened_kl(out.logits, peer_logits, self.temperature)
        loss = out.loss + self.weight * kl
        apply(optimizer, loss, "OSDN")
        with torch.no_grad():
            refreshed = call_with(model, dict(model.named_parameters()), out.inputs)
        peer_ce = F.cross_entropy(peer_logits, y)
        peer_kl = softened_kl(peer_logits, refreshed, self.temperature)
        peer_loss = peer_ce + self.weight * peer_kl
        apply(self.optimizer, peer_loss, "peer")
        terms = {**out.terms, "kl": kl, "peer_loss": peer_loss, "peer_ce": peer_ce}
        terms["peer_kl"] = peer_kl
        return StepLosses(loss, terms, out.logits, out.inputs)
