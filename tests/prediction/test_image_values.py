"""Value domains end to end: a model trained on 16-bit images, a model trained on CT slices stored as 16-bit PNG
(HU + 32768) with CT windows, and the predictor's refusals of values its model was not trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint
from medseg.cli.main import app
from medseg.config.loading import validate_config
from medseg.data.image_intensity import ImageIntensity
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import DataError
from medseg.io.images import read_image, read_image_values
from medseg.io.volume_io import read_volume
from medseg.prediction.predictor import Predictor
from medseg.sliding_window.predict import sliding_window_predict
from medseg.training.loop import train

runner = CliRunner()
SLICES = (48, 56, 64, 72, 88, 96)  # axial slices of the shared spine CT that cut vertebrae
OFFSET = 32768  # the convention of these files: uint16 = HU + 32768 (data.intensity_offset: -32768)
TINY = {"model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 1}}


@pytest.fixture(scope="module")
def sixteen_bit(tmp_path_factory):
    """A tiny model trained on 16-bit gray PNGs (the polyp images' luminance x 257), and those images."""
    tmp = tmp_path_factory.mktemp("sixteen")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=3)
    for path in sorted((data / "images").iterdir()):
        gray = read_image(path, mode="L").astype(np.uint16) * 257
        path.unlink()
        Image.fromarray(gray).save(path.with_suffix(".png"))
    cfg = validate_config({**TINY, "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32],
                                            "color": "gray", "val_fraction": 0.34,
                                            "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}}})
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint, data / "images"


@pytest.fixture(scope="module")
def ct_slices(tmp_path_factory, shared_data):
    """Axial slices of the real spine CT as 16-bit PNG (HU + 32768) with binary vertebra masks, Slice/Labels_slice
    names, a tiny model trained on them with two CT windows, and the volume they came from."""
    tmp = tmp_path_factory.mktemp("ctslices")
    ct = read_volume(shared_data / "spine-ct-totalseg" / "example_ct.nii.gz")
    seg = read_volume(shared_data / "spine-ct-totalseg" / "totalseg_vertebrae.nii.gz")
    (tmp / "data" / "images").mkdir(parents=True)
    (tmp / "data" / "masks").mkdir()
    for k in SLICES:
        Image.fromarray((ct.array[:, :, k] + OFFSET).astype(np.uint16)).save(tmp / "data" / "images" / f"Slice{k}.png")
        mask = np.where(seg.array[:, :, k] > 0, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(tmp / "data" / "masks" / f"Labels_slice{k}.png")
    cfg = validate_config({**TINY, "data": {
        "kind": "images2d", "root": str(tmp / "data"), "pairing": "replace", "image_size": [32, 32], "color": "gray",
        "windows": ["bone", "soft_tissue"], "intensity_offset": -OFFSET, "val_fraction": 0.34,
        "labels": {"classes": {0: "background", 255: "vertebra"}}}})
    ckpt = train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint
    return ckpt, tmp / "data" / "images", ct


def test_a_model_trained_on_16_bit_images_records_and_enforces_them(sixteen_bit, tmp_path):
    ckpt, images = sixteen_bit
    pre = load_checkpoint(ckpt)["preprocessing"]
    assert {k: pre[k] for k in ("intensity", "dtype", "scale", "color")} == {
        "intensity": "scale", "dtype": "uint16", "scale": 1 / 65535, "color": "gray"}
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    path = sorted(images.glob("*.png"))[0]
    values = read_image_values(path, color="gray")
    assert values.dtype == np.uint16 and values.max() > 255
    from_file = predictor.predict(path)
    np.testing.assert_array_equal(from_file, predictor.predict(values))
    assert from_file.shape == (32, 32) and set(np.unique(from_file).tolist()) <= {0, 255}
    eight = tmp_path / "eight.png"
    Image.fromarray((values // 257).astype(np.uint8)).save(eight)
    with pytest.raises(DataError, match=r"eight\.png: 8-bit \(uint8\) values, but this model's training images were "
                                        r"16-bit \(uint16\)"):
        predictor.predict(eight)
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--overlay",
                                 "--statistics", "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.png")), from_file)
    assert (tmp_path / "out" / f"{path.stem}_overlay.png").is_file()


def test_an_8_bit_model_refuses_16_bit_files_and_float_arrays(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(deep)
    result = runner.invoke(app, ["predict", str(ckpt), str(deep), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert "deep.png: 16-bit (uint16) values, but this model's training images were 8-bit (uint8)" in result.output
    rgb = read_image(sorted(images.iterdir())[0], mode="RGB")
    with pytest.raises(DataError, match=r"^array: float \(float32\) values, .* 8-bit \(uint8\); .*"
                                        r"\(x \* 255\)\.round\(\)\.astype\(numpy\.uint8\)"):
        predictor.predict(rgb.astype(np.float32) / 255)
    np.testing.assert_array_equal(predictor.predict(rgb), predictor.predict(sorted(images.iterdir())[0]))


def test_padding_value_must_be_finite():
    net = torch.nn.Conv2d(1, 2, 1)
    for bad in (float("nan"), float("inf"), "0"):
        with pytest.raises(ValueError, match=r"^padding_value must be a finite number \(the padding is network "):
            sliding_window_predict(net, torch.zeros(1, 1, 8, 8), 16, padding_value=bad, divisor=1)


def test_ct_windows_on_16_bit_slices_equal_the_volume_path_and_the_hand_computed_window(ct_slices):
    ckpt, images, ct = ct_slices
    pre = load_checkpoint(ckpt)["preprocessing"]
    assert pre["windows"] == [[400.0, 1800.0], [40.0, 400.0]] and pre["intensity_offset"] == -OFFSET
    assert load_checkpoint(ckpt)["in_channels"] == 2
    rule = ImageIntensity.from_preprocessing(pre)
    volume = VolumePreprocessor({"windows": pre["windows"], "intensity": "ct_window", "spacing_mm": None,
                                 "orientation": "RAS"})
    prepared, _ = volume.prepare_image(ct)  # (2, X, Y, Z); the CT is RAS already, so no axis moves
    for k in SLICES[:3]:
        values = read_image_values(images / f"Slice{k}.png", color="gray")
        np.testing.assert_array_equal(values.astype(np.int64) - OFFSET, ct.array[:, :, k])
        two_d = rule.normalise(values, f"Slice{k}.png")
        torch.testing.assert_close(two_d, prepared[..., k], rtol=0, atol=1e-6)
        hu = ct.array[:, :, k].astype(np.float64)
        by_hand = np.stack([np.clip((hu - c + w / 2) / w, 0, 1) for c, w in ((400, 1800), (40, 400))])
        np.testing.assert_allclose(two_d.numpy(), by_hand, rtol=0, atol=1e-6)
        assert 0 < float(two_d[0].mean()) < 1 and 0 < float(two_d[1].mean()) < 1


def test_a_ct_slice_model_predicts_16_bit_slices_and_refuses_8_bit_ones(ct_slices, tmp_path):
    ckpt, images, _ = ct_slices
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    mask = predictor.predict(images / f"Slice{SLICES[0]}.png")
    assert mask.shape == (122, 101) and set(np.unique(mask).tolist()) <= {0, 255}
    rgb = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match=r"photo\.jpg: 8-bit \(uint8\) values, but this model's training images were "
                                        r"16-bit \(uint16\)"):
        predictor.predict(rgb)
    signed = tmp_path / "signed.tif"  # the same HU stored signed: another dtype, so refused rather than misread
    Image.fromarray((read_image_values(images / f"Slice{SLICES[0]}.png", color="gray").astype(np.int32) - OFFSET)
                    .astype(np.int16)).save(signed)
    with pytest.raises(DataError, match=r"signed\.tif: 32-bit \(int32\) values, but .* 16-bit \(uint16\)"):
        predictor.predict(signed)
