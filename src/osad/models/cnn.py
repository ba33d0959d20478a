"""The small CNN of Madry et al. for MNIST, as an encoder of
:class:`~osad.models.OpenSetNet` (``model.arch=madry-cnn``).

Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083;
the network of their MNIST challenge (``model.py`` of MadryLab/mnist_challenge,
advertorch's ``LeNet5Madry``):

    conv 5x5, 32 filters, 'same' padding, bias, ReLU, 2x2 max-pool, stride 2
    conv 5x5, 64 filters, 'same' padding, bias, ReLU, 2x2 max-pool, stride 2
    flatten (64 x 7 x 7 = 3136 at 28x28)
    fully connected 1024, ReLU
    fully connected 10

This encoder is the two convolution stages and the flatten. OpenSetNet's latent
layer plays the fully connected 1024 (``model.latent_dim=1024`` gives Madry et
al.'s width) and its classifier the last layer. Where osad's network differs from
theirs: the latent layer has a BatchNorm between the linear map and the ReLU
(Madry et al.'s has none); the first layer normalises by the dataset's mean and
std (theirs reads [0, 1] pixels; an affine change the first convolution can
absorb); PyTorch's default initialisation (theirs: truncated normal with std 0.1,
biases 0.1).

The channels are ``width, 2 * width``: ``model.width=32`` gives Madry et al.'s
32 and 64. The max-pools round odd sides up (``ceil_mode``, as TensorFlow's
'same' max-pool of their code), so every image side works: 28 -> 14 -> 7,
8 -> 4 -> 2, 7 -> 4 -> 2, 1 -> 1 -> 1. Denoising places: 1 after the first stage
(its pool), 2 after the second.
"""

from __future__ import annotations

from torch import Tensor, nn

from osad.models.denoise import denoiser

KERNEL = 5
NUM_STAGES = 2


def pooled_side(image_size: int) -> int:
    """Side of the feature map after the two 2x2 max-pools (odd sides round up)."""
    side = image_size
    for _ in range(NUM_STAGES):
        side = -(-side // 2)
    return side


class MadryCNN(nn.Module):
    """Image (already normalised), (B, in_channels, S, S) -> flattened feature map of
    size ``out_features = 2 * width * pooled_side(S) ** 2`` (3136 for S = 28 at width
    32)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 32,
        denoise: str = "gaussian",
        denoise_places: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        channels = [width, 2 * width]
        stages = []
        in_ch = in_channels
        for out_ch in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, KERNEL, padding=KERNEL // 2),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, ceil_mode=True),
                )
            )
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels[-1]
        self.out_features = channels[-1] * pooled_side(image_size) ** 2
        self.denoise = nn.ModuleDict(
            {str(p): denoiser(channels[p - 1], denoise) for p in sorted(denoise_places)}
        )

    def forward(self, x: Tensor) -> Tensor:
        for place, stage in enumerate(self.stages, start=1):
            x = stage(x)
            key = str(place)
            if key in self.denoise:
                x = self.denoise[key](x)
        return x.flatten(1)
