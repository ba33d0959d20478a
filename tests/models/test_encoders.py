"""The encoder families of ``model.arch`` (osad.models.encoders): a contract every
family meets, and the small CNN of Madry et al. (ICLR 2018) in particular."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from osad.config import make_config
from osad.errors import ConfigError
from osad.models import ENCODERS, MadryCNN, OpenSetNet, check_recipe, create_model
from osad.models.cnn import pooled_side

ROOT = Path(__file__).resolve().parents[2]
MNIST5K = ROOT / "configs" / "mnist5k-osdn-pgd.yaml"


def _kwargs(arch: str, size: int, channels: int = 1, **changes) -> dict:
    kwargs = dict(
        num_classes=6,
        in_channels=channels,
        image_size=size,
        mean=[0.3] * channels,
        std=[0.4] * channels,
        arch=arch,
        width=4,
        latent_dim=8,
        denoise="gaussian",
        denoise_places=list(ENCODERS[arch].places),
        decoder=True,
        rotation_head=True,
    )
    return {**kwargs, **changes}


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_every_family_builds_an_osdn_network_of_the_right_shapes(arch, size):
    """Every family, with a denoising block at each of its places, a decoder and a
    rotation head: logits, latent and reconstruction of the right shapes, the blocks
    starting as the identity, a gradient for every parameter, and a recipe
    that counts its parameters on the meta device."""
    model = create_model("openset-resnet", **_kwargs(arch, size)).eval()
    x = torch.rand(3, 1, size, size)
    logits, z = model.forward_features(x)
    assert logits.shape == (3, 6) and z.shape == (3, 8)
    assert model.decoder(z).shape == x.shape and model.rotation_head(z).shape == (3, 4)
    assert sorted(map(int, model.encoder.denoise)) == list(ENCODERS[arch].places)

    plain = create_model("openset-resnet", **_kwargs(arch, size, denoise_places=[])).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert torch.allclose(plain.encode(x), model.encode(x), atol=1e-6)

    model.train()
    logits, z = model.forward_features(x)
    (logits.sum() + model.decoder(z).sum() + model.rotation_head(z).sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    count = check_recipe("openset-resnet", _kwargs(arch, size))
    assert count == sum(t.numel() for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_every_family_refuses_a_place_it_does_not_have(arch):
    family = ENCODERS[arch]
    outside = max(family.places) + 1
    with pytest.raises(ConfigError, match=rf"model.arch={arch} \(") as error:
        OpenSetNet(**_kwargs(arch, 8, denoise_places=[outside]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("size, side", [(28, 7), (8, 2), (7, 2), (5, 2), (4, 1), (1, 1)])
def test_madry_cnn_pools_like_tensorflows_same_padding(size, side):
    """Odd sides round up (TensorFlow's 'same' max-pool of Madry et al.'s code), so no
    side is too small: 7 -> 4 -> 2, 1 -> 1 -> 1."""
    assert pooled_side(size) == side
    encoder = MadryCNN(in_channels=1, image_size=size, width=4)
    features = encoder(torch.rand(2, 1, size, size))
    assert features.shape == (2, encoder.out_features) == (2, 8 * side * side)


def test_madry_cnn_on_28x28_is_madry_et_al_s_network():
    """conv 5x5x32 'same', ReLU, pool 2; conv 5x5x64, ReLU, pool 2; fc 1024, ReLU; fc 10:
    3,274,634 parameters (832 + 51,264 + 3,212,288 + 10,250), plus the 2 x 1024 of the
    BatchNorm osad's latent layer adds."""
    model = OpenSetNet(
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=[0.13],
        std=[0.31],
        arch="madry-cnn",
        width=32,
        latent_dim=1024,
    )
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
    ]
    assert model.encoder.out_features == 64 * 7 * 7
    assert sum(p.numel() for p in model.parameters()) == 3_274_634 + 2 * 1024


@pytest.mark.parametrize("width, size, channels", [(32, 28, 1), (4, 8, 1), (8, 32, 3)])
def test_madry_cnn_parameter_count_follows_the_formula(width, size, channels):
    """Convolutions ``c*w*25 + w`` and ``w*2w*25 + 2w``; the latent layer reads the
    ``2w * ceil(S/4)^2`` features."""
    encoder = MadryCNN(in_channels=channels, image_size=size, width=width)
    side = -(-size // 4)
    expected = channels * width * 25 + width + width * 2 * width * 25 + 2 * width
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert encoder.out_features == 2 * width * side * side


def test_madry_cnn_denoising_places_follow_the_stages():
    encoder = MadryCNN(
        in_channels=1, image_size=28, width=4, denoise="mean+gaussian", denoise_places=(1, 2)
    )
    assert [place[0].bn.num_features for place in encoder.denoise.values()] == [4, 8]


def test_the_configuration_refuses_places_the_family_lacks_in_one_line():
    """The mnist5k presets put blocks at the ResNet's five places; with the CNN an
    OSDN run must name its places (1, 2), and the message says which they are."""
    with pytest.raises(ConfigError) as error:
        make_config(MNIST5K, ["model.arch=madry-cnn"])
    message = str(error.value)
    assert "'model.denoise_places' entries must be in 1, 2 for model.arch=madry-cnn" in message
    assert "[0, 1, 2, 3, 4]" in message and "\n" not in message
    assert make_config(MNIST5K, ["model.arch=madry-cnn", "model.denoise_places=[1,2]"])
    # A method without denoising blocks ignores the field.
    assert make_config(MNIST5K, ["model.arch=madry-cnn", "method=pgd-at"]).model.arch


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["plain", "osdn"])
def test_madry_cnn_trains_one_step_on_mnist5k(method):
    from osad.data import load_openset
    from osad.train import train

    config = make_config(
        MNIST5K,
        [
            f"method={method}",
            "model.arch=madry-cnn",
            "model.width=4",
            "model.latent_dim=16",
            "model.denoise_places=[1,2]",
            "train.epochs=1",
            "train.batch_size=8",
        ],
    )
    config.device = "cpu"
    data = load_openset(config.data)
    data.train_images, data.train_labels = data.train_images[:8], data.train_labels[:8]
    data.val_images, data.val_labels = data.val_images[:8], data.val_labels[:8]
    result = train(config, data, progress=False)
    (record,) = result.history
    assert record["step"] == 1 and np.isfinite(record["train_loss"])
    model = result.model
    assert isinstance(model.encoder, MadryCNN)
    assert len(model.encoder.denoise) == (2 if method == "osdn" else 0)


@pytest.mark.parametrize(
    "arch, width, channels", [("madry-cnn", 32, 64), ("resnet18", 8, 64), ("resnet10", 4, 32)]
)
def test_the_decoder_starts_from_the_channels_the_encoder_ends_with(arch, width, channels):
    """The CNN ends with 2 x width channels (64 x 7 x 7 at width 32), the ResNets with
    8 x width; OSDN's decoder mirrors that (it began at 8 x width for every encoder,
    four times the CNN's and a 12.8M-parameter first layer at Madry et al.'s widths)."""
    model = OpenSetNet(**_kwargs(arch, 28, width=width, latent_dim=1024))
    assert model.encoder.out_channels == channels
    assert model.decoder.project.out_features == channels * 7 * 7
