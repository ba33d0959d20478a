"""Model outputs on a set of images, each first attacked, in batches.

The one batched attacked forward pass of osad: the evaluation protocol, the
sanity checks, the figures and the training loop's validation all call
:func:`outputs_under_attack`. Under torchrun the batches are shared out among
the processes (:func:`osad.distributed.map_batches`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from osad.attacks import build_attack
from osad.attacks.engine import NonFiniteWarning, eval_mode, model_outputs, warn_nonfinite
from osad.attacks.objectives import Objective
from osad.data import to_float
from osad.distributed import derive_seed, is_main, map_batches

if TYPE_CHECKING:
    from osad.config import AttackConfig


@dataclass
class Outputs:
    logits: Tensor
    features: Tensor | None
    images: Tensor | None = None  # the (attacked) inputs, kept only when asked for
    # Per sample (uint8 0/1): its attack met a non-finite objective value or gradient.
    nonfinite: Tensor | None = None


def outputs_under_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    attack_config: AttackConfig | None,
    *,
    batch_size: int,
    seed: int,
    objective: Objective | None = None,
    desc: str = "",
    progress: bool = False,
    keep_images: bool = False,
) -> Outputs:
    """Model outputs on ``images``, each first attacked.

    With the config's classification loss (``objective`` None), an image is
    attacked with its label, or, where the label is -1 or ``labels`` is None,
    with the model's prediction on the clean image. An explicit ``objective``
    (a detector score) gets the labels as they are (-1 for unknown).
    ``keep_images`` also returns the attacked images (float, in [0, 1]). Samples
    whose attack met a non-finite objective value or gradient are flagged in
    ``Outputs.nonfinite`` and counted in one warning.

    Under torchrun the batches are shared out among the ranks and the outputs
    gathered on every rank (:func:`osad.distributed.map_batches`). The attack's
    random source restarts for each batch from ``derive_seed(seed, batch index)``,
    so the outputs are the same whatever the number of processes.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    attack = (
        build_attack(model, attack_config, objective=objective, generator=generator)
        if attack_config is not None
        else None
    )

    def run_batch(index: int, batch: slice) -> tuple[Tensor | None, ...]:
        x = to_float(images[batch])
        nonfinite = None
        if attack is not None:
            generator.manual_seed(derive_seed(seed, index))
            y = None if labels is None else labels[batch]
            if objective is None:
                with torch.no_grad():
                    predicted = model(x).argmax(1)
                y = predicted if y is None else torch.where(y >= 0, y, predicted)
            x = attack(x, y)
            nonfinite = attack.nonfinite.to(torch.uint8)  # collectives take no bool
        with torch.no_grad():
            logits, features = model_outputs(model, x)
        # Scorers, metrics and scores.h5 work in fp32 whatever precision the model ran in.
        features = None if features is None else features.float()
        return logits.float(), features, x if keep_images else None, nonfinite

    # One warning for all the batches (below), not one per batch.
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        logits, features, inputs, nonfinite = map_batches(
            run_batch, len(images), batch_size, device, desc=desc, progress=progress
        )
    if nonfinite is not None and nonfinite.any() and is_main():
        warn_nonfinite(f"{desc}: {attack!r}", int(nonfinite.sum()), len(images))
    return Outputs(logits, features, inputs, nonfinite)
