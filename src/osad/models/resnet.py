"""CIFAR-style ResNet encoder with feature-denoising blocks at chosen places.

3x3 stem with stride 1 and no max-pool, four stages of ``blocks`` BasicBlocks
(:data:`RESNET_BLOCKS`: ResNet-10, 18, 34) with widths ``w, 2w, 4w, 8w`` and
strides 1/2/2/2, global average pooling. Denoising
places: 0 after the stem, 1..4 after each stage (the five places of OSDN).
"""

from __future__ import annotations

from torch import Tensor, nn

from osad.models.denoise import denoiser

# BasicBlocks per stage of each depth.
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Image (already normalised) -> pooled feature vector of size ``8 * width``."""

    def __init__(
        self,
        blocks: tuple[int, ...] = RESNET_BLOCKS["resnet18"],
        in_channels: int = 3,
        width: int = 64,
        denoise: str = "gaussian",
        denoise_places: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.out_channels = self.out_features = widths[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_ch = width
        for i, (n, out_ch) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            layers = [
                BasicBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        place_channels = [width, *widths]
        self.denoise = nn.ModuleDict(
            {str(p): denoiser(place_channels[p], denoise) for p in sorted(denoise_places)}
        )

    def _denoised(self, x: Tensor, place: int) -> Tensor:
        key = str(place)
        return self.denoise[key](x) if key in self.denoise else x

    def forward(self, x: Tensor) -> Tensor:
        x = self._denoised(self.stem(x), 0)
        for i, stage in enumerate(self.stages, start=1):
            x = self._denoised(stage(x), i)
        # A mean, not AdaptiveAvgPool2d: its CUDA backward has no deterministic kernel.
        return x.mean(dim=(2, 3))
