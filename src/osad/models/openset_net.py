"""The open-set network: OSDN and, with parts removed, its baselines.

``OpenSetNet`` maps images in [0, 1] to the logits of the K known classes; the
normalisation is its first layer, so attacks work in pixel space. With
denoising blocks, a decoder and a rotation head it is the Open-Set Defense
Network (OSDN, Shao et al., ECCV 2020, https://arxiv.org/abs/2009.00814):

    z = ReLU(BN(Linear(Encoder(normalise(x)))))      latent
    logits = Linear(z)                                open-set classifier
    rotation_logits = Linear(z)                       transformation classifier
    reconstruction = Decoder(z)                       clean-image decoder

Without them it is the plain network of the ``plain`` and ``pgd-at`` baselines.
The encoder is any family of :data:`osad.models.encoders.ENCODERS` (``arch``): the
CIFAR ResNets, or the small CNN of Madry et al. for 28x28 digits
(:mod:`osad.models.cnn`), whose fully connected 1024 the latent layer plays at
``latent_dim=1024``. The registry name ``openset-resnet`` is older than the CNN
family and stays, since saved weights name it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from osad.inputs import check_images
from osad.models.decoder import Decoder
from osad.models.encoders import build_encoder
from osad.models.registry import register_model

NUM_ROTATIONS = 4


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on images in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@register_model("openset-resnet")
class OpenSetNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        arch: str = "resnet18",
        width: int = 64,
        latent_dim: int = 512,
        denoise: str = "gaussian",
        denoise_places: Sequence[int] = (),
        decoder: bool = False,
        rotation_head: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.normalize = Normalize(mean, std)
        self.encoder = build_encoder(
            arch, in_channels, image_size, width, denoise, tuple(denoise_places)
        )
        self.latent = nn.Sequential(
            nn.Linear(self.encoder.out_features, latent_dim),
            nn.BatchNorm1d(latent_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(latent_dim, num_classes)
        self.rotation_head = nn.Linear(latent_dim, NUM_ROTATIONS) if rotation_head else None
        self.decoder = (
            Decoder(latent_dim, in_channels, image_size, self.encoder.out_channels, width)
            if decoder
            else None
        )

    def encode(self, x: Tensor) -> Tensor:
        """Images in [0, 1] -> latent vectors z.

        ``x`` must be float of shape (B, in_channels, image_size, image_size) with values
        in [0, 1], else :class:`~osad.errors.InputError` (see :mod:`osad.inputs`).
        """
        check_images(x, channels=self.in_channels, size=self.image_size)
        return self.latent(self.encoder(self.normalize(x)))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, latent z): the pair attack objectives and open-set scores use."""
        z = self.encode(x)
        return self.classifier(z), z

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encode(x))
