"""Feature-denoising blocks (Xie et al., CVPR 2019, "Feature Denoising for
Improving Adversarial Robustness", https://arxiv.org/abs/1812.03411).

Each block is ``out = x + BN(W(op(x)))``: a denoising operation ``op``, a 1x1
convolution ``W`` back to the input channels and a BatchNorm whose weight and
bias start at zero, so every block starts as the identity. The operations:

* ``gaussian``: embedded-Gaussian non-local means. With 1x1 embeddings
  theta, phi, g to C/2 channels, ``y_i = sum_j softmax_j(theta_i . phi_j) g_j``
  over all spatial positions: softmax attention with scale 1, computed with
  :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels on
  GPU, memory linear in the number of positions).
* ``dot``: dot-product non-local, ``y_i = (1/N) sum_j (theta_i . phi_j) g_j``,
  computed as ``theta (phi^T g) / N``: linear in N, the same value.
* ``mean``: 3x3 mean filter.
* ``median``: 3x3 median filter (edge-replicated borders).

and the dual-attentive form of OSDN-CAML (Shao et al., IJCV 2022, "Open-set
Adversarial Defense with Clean-Adversarial Mutual Learning",
https://arxiv.org/abs/2202.05953), built from CBAM (Woo et al., ECCV 2018,
https://arxiv.org/abs/1807.06521):

* ``cbam``: ``u = ReLU(BN(Conv1x1(x)))``, then a channel gate
  ``u <- sigmoid(MLP(avgpool(u)) + MLP(maxpool(u))) * u`` (one MLP C -> C/16 -> C
  shared by both pooled vectors) and a spatial gate
  ``u <- sigmoid(Conv7x7([max_c(u); mean_c(u)])) * u``. Its 1x1 convolution comes
  first, so the block adds no ``W`` after it: ``out = x + BN(u)``, with the same
  zero-initialised BN that makes every block start as the identity. (The authors'
  block adds ``u`` directly and so starts as ``x + u``, a random change of every
  feature; the zero-initialised BN still passes gradients to its scale.)

Forms combine with ``+``: ``gaussian+cbam`` places a non-local block followed by
a dual-attentive block at every place (:func:`denoise_forms`, :func:`denoiser`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EmbeddedGaussian(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.out_channels = inner

    @property
    def embeddings(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.theta, self.phi, self.g

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        # One attention head, (B, 1, N, C/2) with channels contiguous: the fused CPU
        # kernel takes only that layout and otherwise falls back to matmul + softmax.
        q, k, v = (
            conv(x).permute(0, 2, 3, 1).contiguous().view(b, 1, h * w, -1)
            for conv in self.embeddings
        )
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return y.view(b, h, w, -1).permute(0, 3, 1, 2)  # channels-last strides; convs accept them


class DotProduct(EmbeddedGaussian):
    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2)  # (B, c, N)
        k = self.phi(x).flatten(2)
        v = self.g(x).flatten(2)
        kv = v @ k.transpose(1, 2)  # (B, c, c): sum_j g_j phi_j^T
        y = (kv @ q) / (h * w)
        return y.reshape(b, self.out_channels, h, w)


class ChannelGate(nn.Module):
    """``sigmoid(MLP(avgpool(u)) + MLP(maxpool(u))) * u``, the MLP shared by both poolings."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, u: Tensor) -> Tensor:
        pooled = torch.stack([u.mean(dim=(2, 3)), u.amax(dim=(2, 3))])  # (2, B, C)
        gate = torch.sigmoid(self.mlp(pooled).sum(0))
        return u * gate[:, :, None, None]


class SpatialGate(nn.Module):
    """``sigmoid(Conv7x7([max_c(u); mean_c(u)])) * u``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, u: Tensor) -> Tensor:
        maps = torch.cat([u.amax(dim=1, keepdim=True), u.mean(dim=1, keepdim=True)], dim=1)
        return u * torch.sigmoid(self.conv(maps))


class DualAttention(nn.Module):
    """The ``cbam`` operation: 1x1 conv + BN + ReLU, then the channel and spatial gates."""

    # The block's own 1x1 convolution comes first; no projection W follows it.
    output_projection = False

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.out_channels = channels
        self.embed = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial_gate(self.channel_gate(self.embed(x)))


class MeanFilter(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MedianFilter(MeanFilter):
    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # (B, C, H, W, 3, 3)
        return windows.flatten(-2).median(dim=-1).values


DENOISERS: dict[str, type[nn.Module]] = {
    "gaussian": EmbeddedGaussian,
    "dot": DotProduct,
    "mean": MeanFilter,
    "median": MedianFilter,
    "cbam": DualAttention,
}


def denoise_forms(text: str) -> tuple[str, ...]:
    """The forms of a ``model.denoise`` value: ``"gaussian+cbam"`` -> ``("gaussian", "cbam")``."""
    return tuple(part.strip() for part in text.split("+"))


class DenoiseBlock(nn.Module):
    """``x + BN(W(op(x)))`` with the BN zero-initialised (identity at start); ``W`` is
    the identity for an operation that projects first (``cbam``)."""

    def __init__(self, channels: int, form: str = "gaussian") -> None:
        super().__init__()
        self.form = form
        self.op = DENOISERS[form](channels)
        self.proj: nn.Module = nn.Identity()
        if getattr(self.op, "output_projection", True):
            self.proj = nn.Conv2d(self.op.out_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn(self.proj(self.op(x)))


def denoiser(channels: int, denoise: str) -> nn.Module:
    """The denoising at one place: a :class:`DenoiseBlock` for one form, a sequence of
    them for a ``+``-combination (applied left to right)."""
    forms = denoise_forms(denoise)
    if len(forms) == 1:
        return DenoiseBlock(channels, forms[0])
    return nn.Sequential(*(DenoiseBlock(channels, form) for form in forms))
