"""The 2D intensity rule (medseg.data.image_intensity): values by hand, the rule's refusals, the dataset path on
real 16-bit and float files, and the config keys that choose the rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.config.loading import config_to_dict, upgrade_stored_config, validate_config
from medseg.data.image_dataset import ImageMaskDataset, training_intensity
from medseg.data.image_intensity import ImageIntensity
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.errors import ConfigError, DataError

LABELS = LabelMap.from_mapping({0: "background", 255: "thing"})


def test_scale_divides_by_the_full_scale_of_the_dtype():
    gray8 = np.array([[0, 51, 255]], np.uint8)
    out8 = ImageIntensity("scale", "gray", "uint8").normalise(gray8, "a")
    out16 = ImageIntensity("scale", "gray", "uint16").normalise(gray8.astype(np.uint16) * 257, "b")
    expected = torch.tensor([[[0.0, 0.2, 1.0]]])
    torch.testing.assert_close(out8, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(out16, expected, rtol=0, atol=1e-7)  # v * 257 / 65535 == v / 255
    floats = np.array([[0.0, 0.5, 1.0]], np.float64)
    torch.testing.assert_close(ImageIntensity("scale", "gray", "float32").normalise(floats, "c"),
                               torch.tensor([[[0.0, 0.5, 1.0]]]), rtol=0, atol=0)


def test_minmax_zscore_and_windows_by_hand():
    values = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    torch.testing.assert_close(ImageIntensity("minmax", "gray", "uint16").normalise(values, "a"),
                               torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]), rtol=0, atol=1e-7)
    assert ImageIntensity("minmax", "gray", "uint16").normalise(np.full((2, 2), 9, np.uint16), "a").abs().max() == 0
    v = values.astype(np.float64)
    torch.testing.assert_close(ImageIntensity("zscore", "gray", "uint16").normalise(values, "a"),
                               torch.from_numpy(((v - v.mean()) / v.std())[None]).float(), rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="^c.png: constant image, cannot z-score normalise it$"):
        ImageIntensity("zscore", "gray", "uint16").normalise(np.full((2, 2), 9, np.uint16), "c.png")
    # HU + 32768 in uint16, windows bone (400, 1800) and soft tissue (40, 400), computed by hand
    hu = np.array([[-1000, -160], [40, 1300]])
    rule = ImageIntensity("ct_window", "gray", "uint16", ((400.0, 1800.0), (40.0, 400.0)), -32768.0)
    out = rule.normalise((hu + 32768).astype(np.uint16), "ct.png")
    bone = np.clip((hu - (400 - 900)) / 1800, 0, 1)
    soft = np.clip((hu - (40 - 200)) / 400, 0, 1)
    torch.testing.assert_close(out, torch.from_numpy(np.stack([bone, soft])).float(), rtol=0, atol=1e-6)
    assert rule.in_channels == 2
    assert rule.settings == {"intensity": "ct_window", "dtype": "uint16", "windows": [[400.0, 1800.0], [40.0, 400.0]],
                             "intensity_offset": -32768.0}


@pytest.mark.parametrize(("rule", "array", "message"), [
    (ImageIntensity("scale", "rgb", "uint8"), np.zeros((2, 2, 3), np.float32),
     r"^x: float \(float32\) values, but the training images were 8-bit \(uint8\); convert it to that dtype .*"
     r"\(for values in 0\.\.1: \(x \* 255\)\.round\(\)\.astype\(numpy\.uint8\)\) \(medseg does not guess a scale\)$"),
    (ImageIntensity("scale", "rgb", "uint8"), np.zeros((2, 2), np.uint16),
     r"^x: 16-bit \(uint16\) values, but the training images were 8-bit \(uint8\)"),
    (ImageIntensity("scale", "gray", "uint16"), np.zeros((2, 2), np.uint8),
     r"^x: 8-bit \(uint8\) values, but the training images were 16-bit \(uint16\)"),
    (ImageIntensity("scale", "gray", "float32"), np.array([[0.5, np.inf]]),
     r"^x: holds NaN or infinite values; pixel values must be finite$"),
    (ImageIntensity("scale", "gray", "float32"), np.array([[-0.5, 2.0]], np.float32),
     r"^x: float values -0\.5\.\.2 lie outside 0\.\.1, which intensity 'scale' takes as they are; use data\.intensity"),
    (ImageIntensity("scale", "gray", None), np.zeros((2, 2), np.int32),
     r"^x: 32-bit \(int32\) image has no fixed full scale for intensity 'scale' \(uint8 and uint16 do\)"),
    (ImageIntensity("ct_window", "gray", None, ((40.0, 400.0),)), np.zeros((2, 2, 3), np.uint8),
     r"^x: 8-bit \(uint8\) image: 8 bits hold no Hounsfield units, so data\.windows cannot apply"),
    (ImageIntensity("scale", "rgb", "uint16"), np.zeros((2, 2), np.uint16),
     r"^x: 16-bit \(uint16\) gray image, but data\.color is rgb; 16-bit and float images are gray"),
    (ImageIntensity("minmax", "gray", "uint16"), np.zeros((2, 2, 3), np.uint16),
     r"^x: 16-bit \(uint16\) image with 3 channels; 16-bit and float images are read as gray"),
])
def test_values_the_rule_cannot_take_are_refused_in_one_line(rule, array, message):
    with pytest.raises(DataError, match=message):
        rule.normalise(array, "x")


def test_old_checkpoints_are_8_bit_scale_models():
    old = {"kind": "images2d", "color": "rgb", "image_size": [8, 8], "scale": 1 / 255}
    rule = ImageIntensity.from_preprocessing(old)
    assert rule == ImageIntensity("scale", "rgb", "uint8") and rule.keeps_uint8
    assert rule.settings == {"intensity": "scale", "dtype": "uint8", "scale": 1 / 255}


def _write_pairs(root, images, masks, suffix=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).save(root / "images" / f"c{i}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


def _data(root, **extra):
    base = {"kind": "images2d", "root": str(root), "image_size": [8, 8], "cache": True,
            "labels": {"classes": {0: "background", 255: "thing"}}}
    model = {"channels": [4, 8], "strides": [2]}  # 8x8 images: a network that halves once
    return validate_config({"data": base | extra, "model": model}).data


@pytest.fixture
def gray_images():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    masks = [np.where(im > 128, 255, 0).astype(np.uint8) for im in images]
    return images, masks


def test_16_bit_training_samples_equal_the_8_bit_ones_scaled_the_same(tmp_path, gray_images):
    """A 16-bit image holding v * 257 gives the sample its 8-bit twin v gives (the old reader gave all ones)."""
    images, masks = gray_images
    eight = _write_pairs(tmp_path / "eight", images, masks)
    sixteen = _write_pairs(tmp_path / "sixteen", [im.astype(np.uint16) * 257 for im in images], masks)
    sets = []
    for root in (eight, sixteen):
        cfg = _data(root, color="gray")
        sets.append(ImageMaskDataset(find_pairs_from_config(cfg), cfg=cfg, labels=LABELS))
    assert sets[1].intensity.settings == {"intensity": "scale", "dtype": "uint16", "scale": 1 / 65535}
    for i in range(3):
        a, b = sets[0][i], sets[1][i]
        assert float(b["image"].max()) > 0.5 and float(b["image"].std()) > 0.1
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=1e-6)
        torch.testing.assert_close(a["label"], b["label"], rtol=0, atol=0)


def test_float_tiffs_train_as_stored_and_out_of_range_ones_are_refused(tmp_path, gray_images):
    images, masks = gray_images
    floats = [im.astype(np.float32) / 255 for im in images]
    root = _write_pairs(tmp_path / "f", floats, masks, suffix=".tif")
    cfg = _data(root, color="gray")
    data = ImageMaskDataset(find_pairs_from_config(cfg), cfg=cfg, labels=LABELS)
    np.testing.assert_allclose(data[1]["image"][0].numpy(), floats[1], rtol=0, atol=1e-6)
    Image.fromarray(floats[2] * 1000).save(root / "images" / "c2.tif")
    with pytest.raises(DataError, match=r"c2\.tif: float values 3\.92157\.\.976\.471 lie outside 0\.\.1"):
        ImageMaskDataset(find_pairs_from_config(cfg), cfg=cfg, labels=LABELS)
    minmax = _data(root, color="gray", intensity="minmax")
    item = ImageMaskDataset(find_pairs_from_config(minmax), cfg=minmax, labels=LABELS)[2]["image"]
    assert float(item.min()) == 0.0 and float(item.max()) == pytest.approx(1.0)


def test_a_run_mixing_bit_depths_names_the_odd_file(tmp_path, gray_images):
    images, masks = gray_images
    root = _write_pairs(tmp_path / "mixed", [images[0], images[1].astype(np.uint16) * 257, images[2]], masks)
    cfg = _data(root, color="gray")
    with pytest.raises(DataError, match=r"c1\.png: 16-bit \(uint16\) values, but the run's first training image is "
                                        r"8-bit \(uint8\)"):
        ImageMaskDataset(find_pairs_from_config(cfg), cfg=cfg, labels=LABELS)


def test_windows_on_8_bit_rgb_images_are_an_error_naming_the_file(tmp_path, gray_images):
    images, masks = gray_images
    root = _write_pairs(tmp_path / "rgb", [np.repeat(im[..., None], 3, -1) for im in images], masks, suffix=".jpg")
    cfg = _data(root, color="gray", windows=["bone"])
    assert training_intensity(find_pairs_from_config(cfg), cfg).intensity == "ct_window"
    with pytest.raises(DataError, match=r"c0\.jpg: 8-bit \(uint8\) image: 8 bits hold no Hounsfield units"):
        ImageMaskDataset(find_pairs_from_config(cfg), cfg=cfg, labels=LABELS)


@pytest.mark.parametrize(("data", "message"), [
    ({"windows": ["bone"]}, r"data\.intensity: CT windows on 2D images .* set data\.color: gray"),
    ({"intensity": "zscore", "windows": ["bone"], "color": "gray"},
     r"data\.windows: given, but data\.intensity is 'zscore'; windows apply only with intensity ct_window"),
    ({"kind": "volumes3d", "intensity": "scale"}, r"data\.intensity: 'scale' is for images2d"),
    ({"kind": "volumes3d", "intensity_offset": -1024}, r"data\.intensity_offset: got -1024, but it applies to "
                                                       "images2d with CT windows only"),
    ({"intensity": "minmax", "intensity_offset": 5}, r"data\.intensity_offset: got 5"),
])
def test_intensity_keys_that_would_be_ignored_are_config_errors(data, message):
    spatial = 3 if data.get("kind") == "volumes3d" else 2
    with pytest.raises(ConfigError, match=message):
        validate_config({"data": {"root": "x"} | data, "model": {"spatial_dims": spatial}})


def test_intensity_defaults_by_kind_and_round_trip():
    cases = [({}, "scale", None), ({"windows": ["bone"], "color": "gray"}, "ct_window", ["bone"]),
             ({"kind": "volumes3d"}, "ct_window", ["soft_tissue"]), ({"kind": "slices2d", "intensity": "zscore"},
                                                                      "zscore", None)]
    for data, intensity, windows in cases:
        spatial = 3 if data.get("kind") == "volumes3d" else 2
        cfg = validate_config({"data": {"root": "x"} | data, "model": {"spatial_dims": spatial}})
        assert (cfg.data.intensity, cfg.data.windows) == (intensity, windows)
        assert validate_config(config_to_dict(cfg)) == cfg


def test_configs_stored_before_2d_intensities_still_load():
    """Every stored images2d config said intensity ct_window + windows (defaults that never applied to images)."""
    old = {"data": {"kind": "images2d", "root": "x", "color": "rgb", "intensity": "ct_window",
                    "windows": ["soft_tissue"]}}
    with pytest.raises(ConfigError):
        validate_config(old)
    assert validate_config(upgrade_stored_config(old)).data.intensity == "scale"
    zscore = {"data": {"kind": "volumes3d", "root": "x", "intensity": "zscore", "windows": ["soft_tissue"]},
              "model": {"spatial_dims": 3}}
    assert validate_config(upgrade_stored_config(zscore)).data.windows is None
    new = config_to_dict(validate_config({"data": {"root": "x", "windows": ["bone"], "color": "gray"}}))
    assert upgrade_stored_config(new) == new
