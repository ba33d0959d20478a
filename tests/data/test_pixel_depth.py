"""Image files wider than 8 bits per channel: 16-bit grayscale is scaled to 0..255,
32-bit integer and floating-point pixels (unknown range) are refused by name.
PIL's own ``convert("L")`` clips them instead: a 16-bit image turns white."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from osad.data.formats import read_image_folder
from osad.errors import DataError
from osad.fas.data import _read_image

SIZE = 16


def _ramp16() -> np.ndarray:
    """A 16-bit ramp over the whole range, 0 to 65535."""
    return np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)


def _write(folder, name: str, pixels: np.ndarray) -> None:
    (folder / "class").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / "class" / name)


@pytest.mark.parametrize("suffix", ["png", "tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, suffix, channels):
    ramp = _ramp16()
    _write(tmp_path, f"ramp.{suffix}", ramp)
    decoded = read_image_folder(tmp_path, channels, SIZE).images[0]
    expected = np.round(ramp / 257.0)
    for channel in decoded.numpy():
        np.testing.assert_array_equal(channel, expected)
    assert decoded.min() == 0 and decoded.max() == 255


def test_16_bit_depth_maps_of_face_sets_are_scaled(tmp_path):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    depth = _read_image(tmp_path / "depth.png", "L", SIZE, "list.txt:1")
    np.testing.assert_array_equal(depth[0], np.round(ramp / 257.0))


@pytest.mark.parametrize(
    "pixels,kind",
    [
        (np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE), "floating-point"),
        (np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) * 1000, "32-bit integer"),
    ],
)
def test_pixels_of_unknown_range_are_refused_by_name(tmp_path, pixels, kind):
    _write(tmp_path, "wide.tiff", pixels)
    with pytest.raises(DataError, match=kind) as error:
        read_image_folder(tmp_path, 1, SIZE)
    assert "wide.tiff" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataError, match=kind):
        _read_image(tmp_path / "class" / "wide.tiff", "L", SIZE, "list.txt:1")


def test_8_bit_images_are_read_as_before(tmp_path):
    pixels = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    _write(tmp_path, "gray.png", pixels)
    np.testing.assert_array_equal(read_image_folder(tmp_path, 1, SIZE).images[0, 0], pixels)
