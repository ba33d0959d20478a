"""Batched image transformations on tensors (no per-sample Python loops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 images become float in [0, 1]; float images pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def random_crop_flip(
    images: Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after zero padding by ``padding`` pixels, then optional horizontal flip.

    One offset and one flip decision per image, drawn from ``generator`` on the
    images' device, applied with a single batched gather.
    """
    b, _, h, w = images.shape
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        device = images.device
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chan = torch.arange(images.shape[1], device=device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    if hflip:
        flip = torch.rand(b, generator=generator, device=images.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def rotate_batch(images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rotate each image by a random multiple of 90 degrees.

    Returns the rotated images and the rotation labels ``k`` in {0, 1, 2, 3},
    where image ``i`` is ``torch.rot90(images[i], k[i], dims=(1, 2))``
    (counter-clockwise). Images must be square.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
    k = torch.randint(0, 4, (images.shape[0],), generator=generator, device=images.device)
    return rotate_by(images, k), k


def rotate_by(images: Tensor, k: Tensor) -> Tensor:
    """Rotate image ``i`` by ``k[i]`` quarter turns: one batched rot90 per turn count."""
    out = images.clone()
    for turns in (1, 2, 3):
        idx = (k == turns).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = torch.rot90(images[idx], turns, dims=(2, 3))
    return out
