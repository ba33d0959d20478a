"""Decoder from the latent vector back to an image of the input's size."""

from __future__ import annotations

from torch import Tensor, nn


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(base size, number of 2x upsamplings) with ``base * 2**ups == image_size``.

    Halves while the size is even and above 4, so 8 -> (4, 1), 28 -> (7, 2),
    32 -> (4, 3), 64 -> (4, 4): any input size is reproduced exactly.
    """
    base, ups = image_size, 0
    while base % 2 == 0 and base > 4:
        base //= 2
        ups += 1
    return base, ups


class Decoder(nn.Module):
    """Linear -> (C, b, b), then transposed-conv 2x upsamplings (BN, LeakyReLU 0.2),
    then a 3x3 conv and a sigmoid: an image in [0, 1] of ``image_size``.

    ``C = channels``, those the encoder ends with (``8 * width`` for the ResNets,
    ``2 * width`` for the Madry et al. CNN); each upsampling halves them, down to no
    fewer than ``width``."""

    def __init__(
        self, latent_dim: int, out_channels: int, image_size: int, channels: int, width: int
    ) -> None:
        super().__init__()
        base, ups = upsampling_plan(image_size)
        ch = channels
        self.base, self.ch = base, ch
        self.project = nn.Linear(latent_dim, ch * base * base)
        layers: list[nn.Module] = [nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(ups):
            nxt = max(ch // 2, width)
            layers += [
                nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(nxt),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch = nxt
        layers += [nn.Conv2d(ch, out_channels, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], self.ch, self.base, self.base)
        return self.body(x)
