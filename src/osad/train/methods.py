"""Training methods: which model parts each uses and whether it trains on attacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from osad.config import Config


@dataclass(frozen=True)
class Method:
    name: str
    adversarial: bool
    denoise: bool
    decoder: bool
    rotation: bool
    description: str
    # Clean-adversarial mutual learning with a plain peer network (OSDN-CAML).
    peer: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("plain", False, False, False, False, "clean cross-entropy, plain ResNet"),
        Method(
            "pgd-at",
            True,
            False,
            False,
            False,
            "adversarial training (Madry et al. 2018), plain ResNet",
        ),
        Method(
            "fd",
            True,
            True,
            False,
            False,
            "adversarial training of the feature-denoising encoder (Xie et al. 2019)",
        ),
        Method(
            "osdn",
            True,
            True,
            True,
            True,
            "OSDN: denoising encoder + clean-image decoder + rotation self-supervision",
        ),
        Method(
            "osdn-caml",
            True,
            True,
            True,
            True,
            "OSDN with clean-adversarial mutual learning: a plain peer network on clean "
            "images, KL terms both ways (Shao et al., IJCV 2022)",
            peer=True,
        ),
    )
}


# The peer network of mutual learning (osdn-caml) is the plain ResNet of the model's family.
PEER_METHOD = "plain"


def model_spec(
    config: Config,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    method: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(registry name, constructor kwargs) of the model ``config`` trains, with the
    parts of ``method`` (default ``config.method``; :data:`PEER_METHOD` for the peer).

    The method decides the parts: denoising blocks only for ``fd``, ``osdn`` and
    ``osdn-caml``; the decoder and rotation head only for the OSDN methods, minus
    their ablations (``train.reconstruction=false``, ``train.self_supervision=false``).
    """
    parts = METHODS[config.method if method is None else method]
    m = config.model
    return "openset-resnet", {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "arch": m.arch,
        "width": m.width,
        "latent_dim": m.latent_dim,
        "denoise": m.denoise,
        "denoise_places": sorted(m.denoise_places) if parts.denoise else [],
        "decoder": parts.decoder and config.train.reconstruction,
        "rotation_head": parts.rotation and config.train.self_supervision,
    }
