"""The anti-spoofing network: HSV input, part shapes, rebuilding from its checkpoint."""

from __future__ import annotations

import colorsys

import pytest
import torch

from osad.checkpoint import load_model, save_model
from osad.fas.model import FasNet, rgb_to_hsv
from osad.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rgb_to_hsv_matches_colorsys():
    torch.manual_seed(0)
    pixels = torch.rand(50, 3)
    pixels[0] = torch.tensor([0.4, 0.4, 0.4])  # grey: hue and saturation 0
    pixels[1] = torch.tensor([0.0, 0.0, 0.0])
    pixels[2] = torch.tensor([1.0, 0.0, 0.5])  # red maximum, hue wraps past 5/6
    hsv = rgb_to_hsv(pixels.view(50, 3, 1, 1)).view(50, 3)
    expected = torch.tensor([colorsys.rgb_to_hsv(*p.tolist()) for p in pixels])
    torch.testing.assert_close(hsv, expected, atol=1e-6, rtol=0)


def test_parts_have_the_paper_layout_at_small_scale():
    model = FasNet(32, stem_width=4, blocks=[[6, 8], [5]], depth_widths=[4], learner_widths=[6, 7])
    x = torch.rand(3, 3, 32, 32)
    multiscale, last = model.features(x)
    # every block's output pooled to the last block's size (32 / 2**2), concatenated
    assert multiscale.shape == (3, 8 + 5, 8, 8) and last.shape == (3, 5, 8, 8)
    depth = model.depth(multiscale)
    assert depth.shape == (3, 1, 8, 8) and model.depth_size == 8
    assert ((depth >= 0) & (depth <= 1)).all()
    assert model(x).shape == (3,)


def test_paper_preset_sizes():
    model = FasNet(256)
    assert model.depth_size == 32
    assert model.extractor.multiscale_channels == 384
    assert model.learner.fc.in_features == 512


@pytest.mark.parametrize("depth_head", [True, False])
def test_checkpoint_rebuilds_the_same_network(tmp_path, depth_head):
    kwargs = {
        "image_size": 16,
        "stem_width": 4,
        "blocks": [[6], [6]],
        "depth_widths": [4],
        "learner_widths": [8],
        "depth_head": depth_head,
    }
    model = create_model("fas-net", **kwargs).eval()
    path = tmp_path / "fas.safetensors"
    save_model(path, model, "fas-net", kwargs)
    rebuilt = load_model(path)
    assert (rebuilt.depth is None) == (not depth_head)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
