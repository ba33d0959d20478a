import pytest
import torch
import torch.nn.functional as F

from osad.models import DenoiseBlock, OpenSetNet, create_model, upsampling_plan
from osad.models.denoise import DotProduct, EmbeddedGaussian


def _net(size: int, **kw) -> OpenSetNet:
    args = dict(
        num_classes=5,
        in_channels=3,
        image_size=size,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        arch="resnet10",
        width=4,
        latent_dim=8,
        decoder=True,
        rotation_head=True,
    )
    args.update(kw)
    return OpenSetNet(**args)


@pytest.mark.parametrize("size", [8, 12, 28, 32, 64])
def test_decoder_reproduces_input_size(size):
    base, ups = upsampling_plan(size)
    assert base * 2**ups == size
    model = _net(size).eval()
    x = torch.rand(2, 3, size, size)
    z = model.encode(x)
    recon = model.decoder(z)
    assert recon.shape == x.shape
    assert recon.min() >= 0.0 and recon.max() <= 1.0


@pytest.mark.parametrize("form", ["gaussian", "dot", "mean", "median"])
def test_denoise_block_starts_as_identity(form):
    block = DenoiseBlock(8, form).eval()
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(block(x), x)


def test_gaussian_equals_explicit_softmax_attention():
    op = EmbeddedGaussian(8)
    x = torch.randn(2, 8, 4, 3)
    b, c, h, w = x.shape
    theta, phi, g = (m(x).flatten(2) for m in (op.theta, op.phi, op.g))  # (B, c/2, N)
    attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N), scale 1
    expected = (attn @ g.transpose(1, 2)).transpose(1, 2).reshape(b, c // 2, h, w)
    assert torch.allclose(op(x), expected, atol=1e-5)


def test_dot_product_equals_explicit_form():
    op = DotProduct(8)
    x = torch.randn(2, 8, 4, 4)
    theta, phi, g = (m(x).flatten(2) for m in (op.theta, op.phi, op.g))
    n = x.shape[2] * x.shape[3]
    affinity = theta.transpose(1, 2) @ phi / n
    expected = (affinity @ g.transpose(1, 2)).transpose(1, 2).reshape(2, 4, 4, 4)
    assert torch.allclose(op(x), expected, atol=1e-5)


def test_median_filter_matches_hand_computation():
    from osad.models.denoise import MedianFilter

    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = MedianFilter(1)(x)
    assert out[0, 0, 1, 1] == 4.0  # median of 0..8
    # corner (0,0) sees the replicated window [0,0,1,0,0,1,3,3,4] -> median 1
    assert out[0, 0, 0, 0] == 1.0


def test_denoise_places_and_parts():
    plain = _net(8, decoder=False, rotation_head=False)
    assert len(plain.encoder.denoise) == 0 and plain.decoder is None and plain.rotation_head is None
    osdn = _net(8, denoise_places=[0, 1, 2, 3, 4])
    assert sorted(osdn.encoder.denoise) == ["0", "1", "2", "3", "4"]
    logits, z = osdn.forward_features(torch.rand(3, 3, 8, 8))
    assert logits.shape == (3, 5) and z.shape == (3, 8)


def test_normalisation_is_inside_the_model():
    model = _net(8).eval()
    x = torch.rand(2, 3, 8, 8)
    normalized = (x - 0.5) / 0.25
    assert torch.allclose(model.normalize(x), normalized)
    stem_out = model.encoder.stem(normalized)
    assert torch.allclose(model.encoder.stem(model.normalize(x)), stem_out)


def test_registry_builds_by_name():
    kwargs = dict(
        num_classes=3,
        in_channels=1,
        image_size=8,
        mean=[0.3],
        std=[0.4],
        width=4,
        latent_dim=8,
        arch="resnet10",
    )
    a = create_model("openset-resnet", **kwargs)
    assert isinstance(a, OpenSetNet)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope", **kwargs)
    with pytest.raises(TypeError):
        create_model("openset-resnet", bogus=1, **kwargs)
    assert F.softmax(a.eval()(torch.rand(1, 1, 8, 8)), 1).shape == (1, 3)


def test_gaussian_block_runs_the_fused_attention_kernel():
    """Inputs that are not 4-d with contiguous channels make SDPA fall back to an
    explicit matmul + softmax (the core's first version did, and was 3x slower)."""
    from torch.profiler import profile

    op = EmbeddedGaussian(8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with profile() as prof:
        op(x).sum().backward()
    ops = {event.key for event in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in ops
    assert not any("attention_math" in name or "softmax" in name for name in ops)
