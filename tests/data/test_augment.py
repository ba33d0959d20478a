import torch

from osad.data import random_crop_flip, to_float


def test_crop_keeps_shape_and_shifts_content():
    x = torch.rand(16, 3, 8, 8)
    out = random_crop_flip(x, padding=2, hflip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Each crop is a shifted window of the zero-padded image.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_is_seeded_and_batched():
    x = torch.rand(64, 1, 4, 4)
    a = random_crop_flip(x, 0, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 0, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flipped = [(torch.equal(a[i], x[i].flip(2))) for i in range(64)]
    assert 10 < sum(flipped) < 54


def test_uint8_to_float():
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert torch.equal(to_float(x), torch.tensor([0.0, 1.0]))
