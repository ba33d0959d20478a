"""The encoder families ``model.arch`` selects: one table, :data:`ENCODERS`.

Each entry builds an encoder from the image's channels and side, the width and the
denoising blocks, and names the places a denoising block may go. An encoder maps
a normalised image (B, C, S, S) to a feature vector (B, ``out_features``), which
:class:`~osad.models.OpenSetNet` feeds to its latent layer. Adding a family is one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from osad.errors import ConfigError, shown, unknown_name
from osad.models.cnn import MadryCNN
from osad.models.resnet import RESNET_BLOCKS, ResNetEncoder

# (in_channels, image_size, width, denoise, denoise_places) -> encoder with out_features
EncoderBuilder = Callable[[int, int, int, str, tuple[int, ...]], nn.Module]


@dataclass(frozen=True)
class EncoderFamily:
    """An encoder architecture: its ``build`` function, the denoising ``places`` it
    has (numbers) and ``where`` they are, in words for messages."""

    build: EncoderBuilder
    places: tuple[int, ...]
    where: str

    def check_places(self, arch: str, places: Iterable[int]) -> None:
        """One-line :class:`~osad.errors.ConfigError` unless every entry of ``places``
        is a denoising place of this family (``arch`` names it in the message)."""
        if not all(p in self.places for p in places):
            raise ConfigError(
                f"'model.denoise_places' entries must be in {_span(self.places)} for "
                f"model.arch={arch} ({self.where}), got {shown(places)}"
            )


def _span(places: tuple[int, ...]) -> str:
    """``0..4`` for a run of three or more consecutive numbers, else ``1, 2``."""
    if len(places) >= 3 and list(places) == list(range(places[0], places[-1] + 1)):
        return f"{places[0]}..{places[-1]}"
    return ", ".join(map(str, places))


def _resnet(blocks: tuple[int, ...]) -> EncoderBuilder:
    def build(
        in_channels: int, image_size: int, width: int, denoise: str, places: tuple[int, ...]
    ) -> nn.Module:
        return ResNetEncoder(blocks, in_channels, width, denoise, places)

    return build


_RESNET_WHERE = "0 after the stem, 1..4 after residual stages 1..4"

ENCODERS: dict[str, EncoderFamily] = {
    **{
        name: EncoderFamily(_resnet(blocks), (0, 1, 2, 3, 4), _RESNET_WHERE)
        for name, blocks in RESNET_BLOCKS.items()
    },
    "madry-cnn": EncoderFamily(
        MadryCNN, (1, 2), "1 after the first conv-ReLU-pool stage, 2 after the second"
    ),
}


def build_encoder(
    arch: str,
    in_channels: int,
    image_size: int,
    width: int,
    denoise: str = "gaussian",
    denoise_places: tuple[int, ...] = (),
) -> nn.Module:
    """The encoder ``arch`` of :data:`ENCODERS`; :class:`~osad.errors.ConfigError` for
    an unknown name or a denoising place the family does not have."""
    if arch not in ENCODERS:
        raise unknown_name("model.arch", arch, ENCODERS)
    family = ENCODERS[arch]
    family.check_places(arch, denoise_places)
    return family.build(in_channels, image_size, width, denoise, tuple(denoise_places))
