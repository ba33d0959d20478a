"""A small CNN written without osad, the kind of model ``osad evaluate`` loads by factory.

``tests/eval/outside_model.py:small_cnn`` is the factory string the CLI tests pass.
"""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Images (B, 1, 8, 8) in [0, 1] -> logits (B, classes); with ``with_features`` the
    forward returns (logits, 32-d features). BatchNorm makes eval mode matter."""

    def __init__(self, classes: int = 6, width: int = 8, with_features: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * 64, 32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, classes)
        self.with_features = with_features

    def forward(self, x: torch.Tensor):
        z = self.body(x)
        logits = self.head(z)
        return (logits, z) if self.with_features else logits


def small_cnn() -> SmallCNN:
    return SmallCNN()


def small_cnn_with_features() -> SmallCNN:
    return SmallCNN(with_features=True)


def wider_cnn() -> SmallCNN:
    return SmallCNN(width=12)


def ten_class_cnn() -> SmallCNN:
    return SmallCNN(classes=10)


def not_a_model() -> int:
    return 3
