import pytest
import torch
import torch.nn.functional as F

from osad.models import DenoiseBlock, DualAttention, OpenSetNet, create_model, upsampling_plan
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


@pytest.mark.parametrize("channels", [3, 16, 64])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dual_attentive_block_starts_as_identity(channels, mode):
    block = DenoiseBlock(channels, "cbam").train(mode == "train")
    x = torch.randn(4, channels, 6, 5)
    assert torch.equal(block(x), x)


def test_dual_attentive_block_learns_away_from_identity():
    """The zero-initialised BN is the last layer of the branch, so its scale gets a
    gradient at once (a zero-initialised BN before the ReLU would stay dead)."""
    torch.manual_seed(0)
    block = DenoiseBlock(8, "cbam").train()
    x = torch.randn(4, 8, 5, 5)
    target = torch.randn_like(x)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves the BN, the second the layers before it
        optimizer.zero_grad()
        F.mse_loss(block(x), target).backward()
        optimizer.step()
    assert block.bn.weight.abs().sum() > 0
    assert block.op.embed[0].weight.grad.abs().sum() > 0
    assert not torch.allclose(block.eval()(x), x)


def test_dual_attention_equals_explicit_gates():
    op = DualAttention(32).eval()
    with torch.no_grad():
        for p in op.parameters():
            p.normal_()
    x = torch.randn(2, 32, 5, 4)
    u = op.embed(x)
    mlp = op.channel_gate.mlp
    channel = torch.sigmoid(mlp(u.mean((2, 3))) + mlp(u.amax((2, 3))))
    assert mlp[0].out_features == 2  # reduction 16
    u = u * channel[:, :, None, None]
    maps = torch.cat([u.max(1, keepdim=True).values, u.mean(1, keepdim=True)], 1)
    conv = op.spatial_gate.conv
    assert conv.kernel_size == (7, 7)
    expected = u * torch.sigmoid(F.conv2d(maps, conv.weight, conv.bias, padding=3))
    assert torch.allclose(op(x), expected, atol=1e-6)


@pytest.mark.parametrize("denoise", ["cbam", "gaussian+cbam", "cbam+median"])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_dual_attentive_encoder_keeps_shapes(denoise, size):
    model = _net(size, denoise=denoise, denoise_places=[0, 1, 2, 3, 4]).eval()
    x = torch.rand(2, 3, size, size)
    logits, z = model.forward_features(x)
    assert logits.shape == (2, 5) and z.shape == (2, 8)
    assert model.decoder(z).shape == x.shape
    # Every block starts as the identity, so the denoised encoder equals the plain one.
    plain = _net(size, denoise_places=[])
    plain.load_state_dict(model.state_dict(), strict=False)
    assert torch.allclose(plain.eval().encode(x), model.encode(x), atol=1e-6)


def test_combined_forms_place_one_block_per_form_in_order():
    model = _net(8, denoise="gaussian+cbam", denoise_places=[0, 4])
    place = model.encoder.denoise["0"]
    assert [block.form for block in place] == ["gaussian", "cbam"]
    keys = set(model.state_dict())
    assert "encoder.denoise.0.1.op.embed.0.weight" in keys
    # A single form keeps the key layout of earlier weights files.
    single = set(_net(8, denoise="gaussian", denoise_places=[0]).state_dict())
    assert "encoder.denoise.0.op.theta.weight" in single
