"""The frames of a face anti-spoofing domain, as tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

REAL, ATTACK = 1, 0


@dataclass
class FasFrames:
    """Frames of one domain (or part of one), all as tensors."""

    images: Tensor  # (N, 3, H, W) RGB, uint8 in [0, 255] or float in [0, 1]
    labels: Tensor  # (N,) int64, 1 = real, 0 = attack
    depth: Tensor  # (N, 1, d, d) uint8 or float in [0, 1]; zeros for attacks
    videos: Tensor  # (N,) int64 index into ``video_names``
    video_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> FasFrames:
        """The frames at ``index`` (video indices keep their meaning)."""
        return FasFrames(
            self.images[index],
            self.labels[index],
            self.depth[index],
            self.videos[index],
            self.video_names,
        )

    def to(self, device: torch.device | str) -> FasFrames:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in moved.items():
            if isinstance(value, Tensor):
                moved[key] = value.to(device)
        return FasFrames(**moved)
