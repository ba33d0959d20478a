import numpy as np
import pytest
import torch
from torch import nn

from osad.data import to_float
from osad.errors import ConfigError
from osad.eval import auroc
from osad.models import OpenSetNet
from osad.openset import MSP, ODIN, Reconstruction


def _linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double().eval()


def test_odin_matches_hand_computation_on_a_linear_model():
    model = _linear_model()
    w = model[1].weight.detach().numpy()
    b = model[1].bias.detach().numpy()
    x = torch.rand(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t, eps = 2.0, 0.05
    expected = []
    for image in x.flatten(1).numpy():
        p = np.exp((w @ image + b) / t)
        p /= p.sum()
        # d/dx log softmax_y(f(x) / T) = (w_y - sum_c p_c w_c) / T for y = argmax
        grad = (w[p.argmax()] - p @ w) / t
        moved = image + eps * np.sign(grad)
        q = np.exp((w @ moved + b) / t)
        expected.append(-(q / q.sum()).max())
    odin = ODIN(model, temperature=t, eps=eps)
    assert np.allclose(odin.score(None, images=x).detach().numpy(), expected, atol=1e-12)


def test_odin_without_preprocessing_is_temperature_scaled_msp():
    model = _linear_model()
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    logits = model(x)
    odin = ODIN(model, temperature=1000.0, eps=0.0)
    assert torch.allclose(odin.score(None, images=x), MSP().score(logits / 1000.0))


def test_odin_gradient_is_exact_through_the_outer_forward_and_spares_parameters():
    model = _linear_model()
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64).requires_grad_(True)
    odin = ODIN(model, temperature=2.0, eps=0.05)
    # the sign step is locally constant, so finite differences see the same derivative
    assert torch.autograd.gradcheck(lambda images: odin.score(None, images=images), (x,))
    with torch.no_grad():
        odin.score(None, images=x)  # the inner step still needs and gets a gradient
    (grad,) = torch.autograd.grad(odin.score(None, images=x).sum(), x)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_scores_that_run_the_model_refuse_training_mode_and_missing_images():
    model = _linear_model().train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        ODIN(model).score(None, images=torch.rand(2, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="input images"):
        ODIN(model.eval()).score(torch.zeros(2, 3))


def test_odin_separates_unknown_digits_on_a_trained_model(plain_model, digits_split0):
    data = digits_split0
    scores = ODIN(plain_model).score(None, images=to_float(data.test_images)).detach()
    assert auroc(scores, ~data.test_known) > 0.7  # 0.81 measured; chance is 0.5


def _osdn(decoder=True):
    return OpenSetNet(
        num_classes=3,
        in_channels=1,
        image_size=8,
        mean=[0.5],
        std=[0.25],
        width=4,
        latent_dim=8,
        decoder=decoder,
    ).eval()


def test_reconstruction_is_the_squared_error_of_the_decoded_latent():
    model = _osdn()
    x = torch.rand(4, 1, 8, 8)
    logits, z = model.forward_features(x)
    scorer = Reconstruction(model)
    expected = ((model.decoder(z) - x) ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(scorer.score(logits, z, x), expected)
    assert torch.allclose(scorer.score(logits, None, x), expected)  # encodes the images itself
    # a perfect reconstruction scores 0, a one-pixel error of 0.5 scores 0.25
    target = model.decoder(z).detach()
    shifted = target.clone()
    shifted[0, 0, 3, 3] += 0.5
    assert torch.allclose(scorer.score(logits, z, shifted)[:1], torch.tensor([0.25]))
    assert scorer.score(logits, z, target).abs().max() < 1e-10


def test_reconstruction_is_differentiable_in_the_images():
    model = _osdn()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(Reconstruction(model).score(None, None, x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_reconstruction_refuses_a_model_without_decoder():
    with pytest.raises(ConfigError, match="needs a model with a decoder"):
        Reconstruction(_osdn(decoder=False))
