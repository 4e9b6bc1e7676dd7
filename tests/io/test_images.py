"""Tests for medseg.io.images: real files written with Pillow, plus real Kvasir-SEG files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.errors import DataError
from medseg.io.images import (
    IMAGE_SUFFIXES,
    image_size,
    read_image,
    read_mask,
    write_mask,
    write_overlay,
)


@pytest.fixture
def kvasir_dir(kvasir: Path) -> Path:
    return kvasir


@pytest.fixture
def rgb_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


@pytest.fixture
def smooth_rgb() -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:64]
    return np.stack([yy * 5, xx * 4, (yy + xx) * 2], axis=-1).astype(np.uint8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG with a valid IHDR claiming ``width`` x ``height`` and no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_image_suffixes_are_lower_case_with_dot():
    assert IMAGE_SUFFIXES == (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_read_image_lossless_formats_round_trip(tmp_path, rgb_array, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(rgb_array).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb_array)


def test_read_image_jpeg_gray_and_rgb_modes(tmp_path, smooth_rgb):
    path = tmp_path / "x.JPEG"
    Image.fromarray(smooth_rgb).save(path, format="JPEG", quality=95)
    rgb = read_image(path)
    gray = read_image(path, mode="L")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert gray.shape == (48, 64) and gray.dtype == np.uint8
    assert np.abs(rgb.astype(int) - smooth_rgb.astype(int)).max() < 12


def test_read_image_gray_file_as_rgb_repeats_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_read_image_mode_none_keeps_16_bit_values(tmp_path):
    values = np.array([[0, 1], [1000, 65535]], dtype=np.uint16)
    write_mask(tmp_path / "m16.png", values)
    out = read_image(tmp_path / "m16.png", mode=None)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, values)


def test_read_image_rejects_bad_mode(tmp_path, rgb_array):
    Image.fromarray(rgb_array).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="mode must be"):
        read_image(tmp_path / "x.png", mode="CMYK")  # type: ignore[arg-type]


def test_truncated_jpeg_raises_data_error_naming_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, format="JPEG")
    cut = tmp_path / "cut.jpg"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image: .*truncated"):
        read_image(cut)
    # The header is intact, so the size is still known without decoding.
    assert image_size(cut) == (96, 128)


def test_truncated_real_kvasir_jpeg_raises(tmp_path, kvasir_dir):
    source = min((kvasir_dir / "images").glob("*.jpg"))
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(DataError, match=source.name):
        read_image(cut)


def test_garbage_file_raises_data_error(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"noise\.png: cannot read image"):
        read_image(path)
    with pytest.raises(DataError, match=r"noise\.png"):
        image_size(path)


def test_missing_and_unsupported_files_raise(tmp_path):
    with pytest.raises(DataError, match=r"absent\.png: cannot read image: file does not exist"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "scan.webp").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"scan\.webp: .*'\.webp' is not supported; allowed: \.jpg"):
        read_image(tmp_path / "scan.webp")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image: .*pixels"):
        read_image(bomb)
    with pytest.raises(DataError, match=r"bomb\.png"):
        image_size(bomb)


def test_image_size_reads_header_only(tmp_path):
    path = _png_header_only(tmp_path / "header.png", 300, 200)
    assert image_size(path) == (200, 300)


def test_real_kvasir_image_and_mask(kvasir_dir):
    name = "cju14g8o4xui30878gkgbrvqj.jpg"
    image = read_image(kvasir_dir / "images" / name)
    mask = read_mask(kvasir_dir / "masks" / name)
    assert image.shape == (531, 622, 3)
    assert image_size(kvasir_dir / "images" / name) == (531, 622)
    assert mask.shape == (531, 622, 3)  # Kvasir stores masks as RGB JPEG
    assert mask.min() <= 8 and mask.max() >= 247


def test_read_mask_palette_gif_gives_gray_values(tmp_path):
    values = np.array([[0, 255, 255], [0, 0, 255]], dtype=np.uint8)
    Image.fromarray(values).convert("P").save(tmp_path / "car_mask.gif")
    out = read_mask(tmp_path / "car_mask.gif")
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, values)


def test_read_mask_one_bit_png_gives_0_255(tmp_path):
    values = np.array([[0, 1], [1, 0]], dtype=bool)
    Image.fromarray(values).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.png"), values * 255)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_mask_round_trip_is_exact_and_atomic(tmp_path, dtype):
    mask = (np.arange(30).reshape(5, 6) * 7).astype(dtype)
    out = write_mask(tmp_path / "sub" / "mask.png", mask)
    assert out == tmp_path / "sub" / "mask.png"
    back = read_mask(out)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, mask)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.png"]  # no temp left


def test_write_mask_replaces_existing_file(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, np.zeros((2, 2), np.uint8))
    write_mask(path, np.full((3, 3), 4, np.uint8))
    np.testing.assert_array_equal(read_mask(path), np.full((3, 3), 4, np.uint8))


def test_write_mask_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dtype must be uint8, uint16 or bool, got float32"):
        write_mask(tmp_path / "m.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\.png"):
        write_mask(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        write_mask(tmp_path / "m.png", np.zeros((2, 2, 2, 2), np.uint8))
    assert not list(tmp_path.iterdir())


def test_write_overlay_blends_colors_and_draws_contours(tmp_path):
    image = np.full((7, 7, 3), 100, dtype=np.uint8)
    classes = np.zeros((7, 7), dtype=np.int64)
    classes[1:6, 1:6] = 1
    out = write_overlay(tmp_path / "o.png", image, classes, alpha=0.5)
    result = read_image(out)
    np.testing.assert_array_equal(result[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(result[3, 3], [50, 178, 50])  # 0.5 * 100 + 0.5 * green
    np.testing.assert_array_equal(result[1, 3], [0, 255, 0])  # contour in class color
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_write_overlay_gray_image_and_two_classes(tmp_path):
    classes = np.zeros((6, 6), dtype=np.uint8)
    classes[:, 3:] = 2
    out = write_overlay(tmp_path / "o.png", np.zeros((6, 6), np.uint8), classes, alpha=1.0)
    np.testing.assert_array_equal(read_image(out)[2, 5], [255, 0, 0])  # class 2 is red


def test_write_overlay_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"mask_classes shape \(4, 4\) != image shape \(5, 5\)"):
        write_overlay(tmp_path / "o.png", np.zeros((5, 5, 3), np.uint8), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="alpha"):
        write_overlay(
            tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), int), alpha=2
        )
