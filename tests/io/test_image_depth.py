"""Bit depth of 2D image files: 16-bit PNG/TIFF, integer and float TIFF read exactly; what cannot be read right
(multi-page files, 16-bit colour, deep images asked for as 8-bit) is refused in one line naming the file."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from medseg.errors import DataError
from medseg.io.images import display_uint8, image_dtype, read_image, read_image_values, read_mask

RAMP16 = np.array([[0, 1, 255, 256], [300, 4095, 40000, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_files_read_back_their_exact_values(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(RAMP16).save(path)
    for color in ("rgb", "gray"):
        values = read_image_values(path, color=color)
        assert values.dtype == np.uint16
        np.testing.assert_array_equal(values, RAMP16)
    assert image_dtype(path) == np.uint16
    np.testing.assert_array_equal(read_image(path, mode=None), RAMP16)


def test_float_and_signed_tiffs_read_back_their_exact_values(tmp_path):
    floats = np.array([[0.25, -1.5], [3.0e6, 1e-7]], dtype=np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    values = read_image_values(tmp_path / "f.tif", color="gray")
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, floats)
    hu = np.array([[-1024, -1], [0, 3071]], dtype=np.int16)  # HU stored signed, no offset
    Image.fromarray(hu).save(tmp_path / "s.tif")
    values = read_image_values(tmp_path / "s.tif", color="gray")
    assert values.dtype == np.int32 and image_dtype(tmp_path / "s.tif") == np.int32
    np.testing.assert_array_equal(values, hu)


def test_8_bit_images_are_converted_to_the_color_asked_for(tmp_path):
    gray = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image_values(tmp_path / "g.png", color="gray"), gray)
    rgb = read_image_values(tmp_path / "g.png", color="rgb")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], gray)
    with pytest.raises(ValueError, match="color must be 'rgb' or 'gray', got 'RGB'"):
        read_image_values(tmp_path / "g.png", color="RGB")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_16_bit_image_asked_for_as_8_bit_is_refused_not_clipped(tmp_path, mode):
    """The old reader converted it to 8 bits: every value above 255 became 255 (a blank image)."""
    Image.fromarray(RAMP16).save(tmp_path / "x.png")
    with pytest.raises(DataError, match=rf"x\.png: 16-bit image \(Pillow mode I;16\); reading it as 8-bit {mode} "
                                        "would clip its values"):
        read_image(tmp_path / "x.png", mode=mode)


def test_multi_page_tiff_is_refused_with_its_page_count(tmp_path):
    pages = [Image.fromarray(np.full((3, 4), v, np.uint16)) for v in (1, 2, 3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    for read in (lambda p: read_image_values(p, color="gray"), read_mask, image_dtype):
        with pytest.raises(DataError, match=r"^\S*stack\.tif: holds 3 pages \(TIFF\); medseg reads one 2D image "
                                            "per file"):
            read(tmp_path / "stack.tif")


def test_16_bit_colour_png_is_refused_rather_than_cut_to_8_bits(tmp_path):
    rgb16 = np.full((2, 3, 3), 1000, np.uint16)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(rgb16))
    with pytest.raises(DataError, match=r"c\.png: colour image with 16 bits per channel \(RGB;16B\)"):
        read_image_values(tmp_path / "c.png", color="rgb")


def test_display_uint8_stretches_deep_images_and_keeps_8_bit_ones():
    np.testing.assert_array_equal(display_uint8(RAMP16[:1, :2] * 100), [[0, 255]])
    assert display_uint8(np.full((2, 2), 7.5, np.float32)).tolist() == [[0, 0], [0, 0]]
    eight = np.array([[3, 9]], np.uint8)
    assert display_uint8(eight) is eight
