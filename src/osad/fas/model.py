"""The face anti-spoofing network of regularised fine-grained meta-learning.

Shao, Lan and Yuen, "Regularized Fine-grained Meta Face Anti-spoofing",
AAAI 2020, https://arxiv.org/abs/1911.10771. Three parts:

* feature extractor F: RGB+HSV input (6 channels), a stem conv and blocks of
  3x3 conv-BN-ReLU layers each followed by 2x2 max pooling;
* depth estimator D: regresses a depth map from the concatenated multi-scale
  features of F (every block's output average-pooled to the last block's size);
* meta learner M: conv-BN-ReLU blocks (pooling after all but the last), global
  average pooling and a linear layer to one real-vs-attack logit.

Paper sizes: 256x256 input, F = stem 64 and three blocks (128, 196, 128),
D = (128, 64) on 384 channels, M = (128, 256, 512); the depth map is 32x32.
The input is RGB in [0, 1]; the HSV channels are computed inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osad.models.registry import register_model


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> HSV in [0, 1], hue as a fraction of a turn."""
    r, g, b = rgb.unbind(1)
    value, argmax = rgb.max(1)
    chroma = value - rgb.min(1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = hue.gather(1, argmax[:, None]).squeeze(1) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, 1.0), 0.0)
    return torch.stack([hue, saturation, value], 1)


class RgbHsv(nn.Module):
    """RGB (3 channels) -> RGB and HSV (6 channels), the paper's input."""

    def forward(self, rgb: Tensor) -> Tensor:
        return torch.cat([rgb, rgb_to_hsv(rgb)], 1)


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def conv_stack(in_ch: int, widths: Sequence[int]) -> list[nn.Module]:
    """3x3 conv-BN-ReLU layers with the given output widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += conv_bn_relu(in_ch, width)
        in_ch = width
    return layers


class FeatureExtractor(nn.Module):
    """F: image -> (multi-scale features for D, last block's features for M)."""

    def __init__(self, in_channels: int, stem_width: int, blocks: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, stem_width))
        stages, in_ch = [], stem_width
        for widths in blocks:
            stages.append(nn.Sequential(*conv_stack(in_ch, widths), nn.MaxPool2d(2)))
            in_ch = widths[-1]
        self.blocks = nn.ModuleList(stages)
        self.out_channels = in_ch
        self.multiscale_channels = sum(widths[-1] for widths in blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        size = x.shape[-1]
        multiscale = torch.cat([F.adaptive_avg_pool2d(o, size) for o in outputs], 1)
        return multiscale, x


class DepthEstimator(nn.Module):
    """D: multi-scale features -> a one-channel depth map in [0, 1] of the same size."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_stack(in_channels, widths),
            nn.Conv2d(widths[-1], 1, 3, padding=1),
            # A sigmoid rather than a ReLU output: an output ReLU that starts negative
            # everywhere would never learn.
            nn.Sigmoid(),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features)


class MetaLearner(nn.Module):
    """M: features of F -> one logit per image (positive = real)."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += conv_bn_relu(in_channels, width)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_channels, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.features(features)).squeeze(1)


@register_model("fas-net")
class FasNet(nn.Module):
    """F, D and M together; ``forward`` maps RGB frames in [0, 1] to real-vs-attack
    logits (``sigmoid`` = probability of a real face). ``depth_head=False`` drops D
    (the no-depth ablation)."""

    def __init__(
        self,
        image_size: int,
        stem_width: int = 64,
        blocks: Sequence[Sequence[int]] = ((128, 196, 128),) * 3,
        depth_widths: Sequence[int] = (128, 64),
        learner_widths: Sequence[int] = (128, 256, 512),
        depth_head: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.depth_size = image_size >> len(blocks)
        self.input = RgbHsv()
        self.extractor = FeatureExtractor(6, stem_width, blocks)
        self.depth = (
            DepthEstimator(self.extractor.multiscale_channels, depth_widths) if depth_head else None
        )
        self.learner = MetaLearner(self.extractor.out_channels, learner_widths)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(multi-scale features for D, features for M) of RGB frames in [0, 1]."""
        return self.extractor(self.input(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.learner(self.features(x)[1])
