"""One step of a method with several networks: each updated in turn on the whole batch.

The networks of a method (:data:`osad.methods.METHODS`) take their
optimiser steps one after the other, in the order the method lists them, each
on its own objective. A term that reads another network's logits
(:class:`~osad.methods.terms.MutualKL`) gets, as a constant, that network's
training pass of this step when it updates later, and its prediction refreshed
after its update when it updated earlier. Each network's pass runs once per
step (its BatchNorm running statistics move once); the refreshed pass leaves
them alone (:func:`osad.train.functional.call_with`).

For ``osdn-caml`` (Shao, Perera, Yuen and Patel, "Open-set Adversarial Defense
with Clean-Adversarial Mutual Learning", IJCV 2022,
https://arxiv.org/abs/2202.05953) this is the paper's step. A peer network ``P``
(the plain ResNet of the same family: no denoising blocks, decoder or rotation
head) classifies the clean images ``x`` while OSDN ``O`` classifies their
attacked versions ``x_adv``; with ``KL_T`` of :func:`osad.methods.terms.softened_kl`:

1. OSDN step on ``L_OSDN + w KL_T(P(x) || O(x_adv))``, with ``P(x)`` a constant;
2. peer step on ``CE(P(x), y) + w KL_T(O'(x_adv) || P(x))``, with ``O'`` OSDN
   after its step (its refreshed prediction, a constant), the paper's order.

``w`` is ``train.mutual_weight`` (2 in the paper) and ``T``
``train.mutual_temperature`` (1: the authors' code applies no temperature).
Both networks run in train mode, with batch statistics; each has its own optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from osad.methods.terms import NetworkPass
from osad.rundir import MAIN
from osad.train.functional import call_with
from osad.train.objectives import TrainObjective
from osad.train.state import Network

# optimizer, loss, network name: one checked optimisation step (the loop's).
ApplyStep = Callable[[torch.optim.Optimizer, Tensor, str], None]


def term_key(network: str, term: str) -> str:
    """A term's key in the step's terms and in ``history.jsonl`` (``train_<key>``):
    the term's name for ``main``, ``NETWORK_<name>`` for the others."""
    return term if network == MAIN else f"{network}_{term}"


class NetworksInTurn:
    """One step of several networks (see the module docstring): ``networks`` and their
    ``objectives`` by name, in update order."""

    def __init__(self, networks: dict[str, Network], objectives: dict[str, TrainObjective]):
        self.networks, self.objectives = networks, objectives

    def __call__(
        self, x: Tensor, y: Tensor, apply: ApplyStep
    ) -> tuple[dict[str, Tensor], dict[str, NetworkPass]]:
        """Update every network on the clean batch ``x, y``; returns the losses and
        terms of all (keys by :func:`term_key`, ``loss`` is ``main``'s) and each
        network's training pass."""
        passes: dict[str, NetworkPass] = {}
        refreshed: dict[str, Tensor | None] = {}  # None: updated, not yet asked for

        def run(name: str) -> NetworkPass:
            if name not in passes:
                passes[name] = self.objectives[name].forward(self.networks[name].model, x, y)
            return passes[name]

        def teacher(name: str) -> Tensor:
            if name in refreshed:  # it has updated: its prediction after the update
                if refreshed[name] is None:
                    model, p = self.networks[name].model, passes[name]
                    with torch.no_grad():
                        params = dict(model.named_parameters())
                        refreshed[name] = call_with(model, params, p.inputs[: p.batch])
                return refreshed[name]
            return run(name).logits

        terms: dict[str, Tensor] = {}
        for name, objective in self.objectives.items():
            out = objective.losses(run(name), teacher)
            apply(self.networks[name].optimizer, out.loss, name)
            refreshed[name] = None
            terms[term_key(name, "loss")] = out.loss
            terms.update({term_key(name, k): v for k, v in out.terms.items()})
        return terms, passes
