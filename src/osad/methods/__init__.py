"""Training methods: the networks each trains, their model parts and loss terms.

A method is one entry of :data:`METHODS`, declared with keyword fields: its
networks (:class:`NetworkSpec`), each with whether it trains on the training
attack, whether its encoder has feature-denoising blocks, and its loss terms
(:mod:`osad.methods.terms`). The model's other parts follow from the terms the
configuration keeps: a decoder for :class:`~osad.methods.terms.Reconstruction`, a
rotation head for :class:`~osad.methods.terms.RotationCE`. A method with several
networks updates them in turn on each batch, in the order listed
(:mod:`osad.train.turns`); the first is the run's model (``main``), and every
network is saved, checkpointed and testable by name (``osad test --model NAME``).

Adding a method is one entry (and, for a new loss, one term; see the TRADES
example in :mod:`osad.methods.terms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from osad.errors import ConfigError
from osad.methods.terms import ClassificationCE, MutualKL, Reconstruction, RotationCE, Term
from osad.rundir import MAIN, RUN_MODELS

if TYPE_CHECKING:
    from osad.config import Config


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a method: its name in the run, whether it trains on the training
    attack's images, whether its encoder has feature-denoising blocks
    (``model.denoise`` at ``model.denoise_places``), and its loss terms in order."""

    name: str = MAIN
    attack: bool = False
    denoise: bool = False
    terms: tuple[Term, ...] = (ClassificationCE(),)

    def __post_init__(self) -> None:
        names = [t.name for t in self.terms]
        assert len(set(names)) == len(names), f"network {self.name}: two terms named alike"
        assert self.name in RUN_MODELS, f"network {self.name}: add its name to RUN_MODELS"

    def terms_for(self, train: Any) -> tuple[tuple[Term, float], ...]:
        """(term, weight) of each term ``train`` (a TrainConfig) keeps, configured."""
        return tuple((t.configured(train), t.weight(train)) for t in self.terms if t.enabled(train))

    def has_part(self, part: str, train: Any) -> bool:
        """Whether the model needs ``part`` (``decoder``, ``rotation_head``) for the
        terms ``train`` keeps."""
        return any(t.part == part for t in self.terms if t.enabled(train))


@dataclass(frozen=True)
class Method:
    """A training method: ``name``, a one-line ``description`` and its networks, the
    run's model (``main``) first."""

    name: str
    description: str
    networks: tuple[NetworkSpec, ...]

    def __post_init__(self) -> None:
        names = [n.name for n in self.networks]
        assert names and names[0] == MAIN and len(set(names)) == len(names), names

    def network(self, name: str = MAIN) -> NetworkSpec:
        """The network called ``name``; :class:`~osad.errors.ConfigError` if none is."""
        for spec in self.networks:
            if spec.name == name:
                return spec
        names = ", ".join(n.name for n in self.networks)
        raise ConfigError(f"method {self.name} trains no network {name!r}, only: {names}")

    @property
    def adversarial(self) -> bool:
        """Whether the run's model trains on the training attack."""
        return self.network().attack

    @property
    def decoder(self) -> bool:
        """Whether the run's model has a decoder unless ``train.reconstruction=false``."""
        return any(t.part == "decoder" for t in self.network().terms)


# OSDN (Shao et al., ECCV 2020): denoising encoder, clean-image decoder, rotation head.
_OSDN_TERMS = (ClassificationCE(), RotationCE(), Reconstruction())

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="plain",
            description="clean cross-entropy, plain ResNet",
            networks=(NetworkSpec(),),
        ),
        Method(
            name="pgd-at",
            description="adversarial training (Madry et al. 2018), plain ResNet",
            networks=(NetworkSpec(attack=True),),
        ),
        Method(
            name="fd",
            description="adversarial training of the feature-denoising encoder (Xie et al. 2019)",
            networks=(NetworkSpec(attack=True, denoise=True),),
        ),
        Method(
            name="osdn",
            description="OSDN: denoising encoder + clean-image decoder + rotation self-supervision",
            networks=(NetworkSpec(attack=True, denoise=True, terms=_OSDN_TERMS),),
        ),
        Method(
            name="osdn-caml",
            description="OSDN with clean-adversarial mutual learning: a plain peer network on "
            "clean images, KL terms both ways (Shao et al., IJCV 2022)",
            networks=(
                NetworkSpec(
                    attack=True, denoise=True, terms=(*_OSDN_TERMS, MutualKL(teacher="peer"))
                ),
                NetworkSpec(name="peer", terms=(ClassificationCE(), MutualKL(teacher=MAIN))),
            ),
        ),
    )
}


def model_spec(
    config: Config,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    network: str = MAIN,
) -> tuple[str, dict[str, Any]]:
    """(registry name, constructor kwargs) of network ``network`` of the method
    ``config`` trains (``main``: the run's model; ``peer``: osdn-caml's peer).

    The network's entry decides the parts: denoising blocks where it says so
    (``fd``, ``osdn``, ``osdn-caml``), the decoder and rotation head where its terms
    need them, minus the ablations (``train.reconstruction=false``,
    ``train.self_supervision=false``).
    """
    spec = METHODS[config.method].network(network)
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
        "denoise_places": sorted(m.denoise_places) if spec.denoise else [],
        "decoder": spec.has_part("decoder", config.train),
        "rotation_head": spec.has_part("rotation_head", config.train),
    }
