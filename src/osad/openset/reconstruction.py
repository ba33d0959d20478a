"""Reconstruction error of the OSDN decoder (Shao et al., ECCV 2020,
https://arxiv.org/abs/2009.00814).

OSDN's decoder D is trained to rebuild the *clean* image from the latent
``z = E(x_adv)`` of an attacked training image of a known class. An image
whose latent the decoder cannot turn back into it, an unknown-class image
above all, has a large error::

    score(x) = || D(E(x)) - x ||_2^2      (summed over channels and pixels)

Fits nothing. Needs the model (with a decoder) and the images; the latent
``features`` are used when given (they must be ``E(x)`` of those images, as
``forward_features`` returns them), else the model encodes the images.
Differentiable end to end.
"""

from __future__ import annotations

from torch import Tensor, nn

from osad.errors import ConfigError
from osad.openset.base import Scorer, require, require_eval_mode


class Reconstruction(Scorer):
    name = "reconstruction"
    label = "Reconstruction"
    needs_features = True
    needs_images = True
    needs_model = True

    def __init__(self, model: nn.Module) -> None:
        if getattr(model, "decoder", None) is None:
            raise ConfigError(
                "score 'reconstruction' needs a model with a decoder, and this one has none; "
                "train with method=osdn and train.reconstruction=true, or drop the score"
            )
        self.model = model

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        images = require(images, "the input images", self.name)
        require_eval_mode(self.model, self.name)
        latent = self.model.encode(images) if features is None else features
        reconstruction = self.model.decoder(latent)
        return (reconstruction - images).square().flatten(1).sum(dim=1)
