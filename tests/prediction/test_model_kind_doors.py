"""Doors where a setting meets the model: instance-norm window sizes, overlap near 1, outputs a kind cannot write."""

from __future__ import annotations

import pytest
import torch

from medseg.checkpoint import save_checkpoint
from medseg.config.kinds import DataKind
from medseg.config.loading import config_to_dict, validate_config
from medseg.data.labels import LabelMap
from medseg.errors import ConfigError, DataError
from medseg.models.factory import build_model
from medseg.prediction.batch import predict_paths
from medseg.prediction.predictor import Predictor
from medseg.sliding_window.predict import MAX_TILES, sliding_window_predict


def _config(tmp_path, norm="instance", patch=(32, 32, 32), roi=None):
    return {
        "data": {"kind": "volumes3d", "root": str(tmp_path), "patch_size": list(patch),
                 "labels": {"classes": {0: "background", 1: "bone"}}},
        "model": {"spatial_dims": 3, "channels": [4, 8, 16, 32, 64], "strides": [2, 2, 2, 2], "norm": norm},
        "infer": {"roi_size": roi},
    }


@pytest.mark.parametrize(("patch", "roi", "key"), [((16, 16, 16), None, "data.patch_size"),
                                                  ((32, 32, 32), [16, 32, 32], "infer.roi_size")])
def test_instance_norm_config_refuses_a_one_voxel_bottleneck(tmp_path, patch, roi, key):
    with pytest.raises(ConfigError, match=rf"{key}: \[16, .*16x down-sampling.*normalisation.*e\.g\. \[32, 32, 32\]"):
        validate_config(_config(tmp_path, patch=patch, roi=roi), source="t")
    assert validate_config(_config(tmp_path, norm="batch", patch=patch, roi=roi), source="t").model.norm == "batch"


@pytest.fixture
def instance_ckpt(tmp_path):
    cfg = validate_config(_config(tmp_path), source="t")
    model = build_model(cfg.model, in_channels=1, out_channels=2)
    labels = LabelMap.from_mapping({0: "background", 1: "bone"})
    pre = {"kind": "volumes3d", "patch_size": [32, 32, 32]}
    return save_checkpoint({"config": config_to_dict(cfg), "labels": labels.to_dict(), "preprocessing": pre,
                            "in_channels": 1, "out_channels": 2, "state_dict": model.state_dict()},
                           tmp_path / "inst.pt")


def test_instance_norm_checkpoint_refuses_small_windows_at_predict_time(instance_ckpt):
    spell = lambda n: "--" + n.replace("_", "-")  # noqa: E731
    with pytest.raises(ConfigError, match=r"^--roi-size: got \[16\]; this network normalises its deepest level and "
                                          r"needs windows "
                                          r"larger than 16 .*e\.g\. \[32\]$"):
        Predictor.from_checkpoint(instance_ckpt, device="cpu", spell=spell, roi_size="16")
    assert Predictor.from_checkpoint(instance_ckpt, device="cpu", roi_size="17").infer.roi_size == (17,)


def test_an_overlap_near_one_is_refused_before_millions_of_windows():
    net = torch.nn.Conv3d(1, 2, 1)
    image = torch.zeros(1, 1, 64, 64, 64)
    with pytest.raises(ConfigError, match=rf"^overlap: 0\.99 with windows of 8x8x8 needs \d+ windows for an image "
                                          rf"of 64x64x64 \(at most {MAX_TILES}\)"):
        sliding_window_predict(net, image, 8, overlap=0.99, tiling="roi", divisor=1)
    small = image[..., :24, :24, :24]  # a sane overlap runs (a smaller image: fewer windows, same path)
    out = sliding_window_predict(net, small, 8, overlap=0.5, tiling="roi", divisor=1, output="logits")
    assert out.shape == (1, 2, 24, 24, 24)


def test_tiny_windows_on_instance_norm_say_what_to_do():
    net = build_model(validate_config(_config("/x", patch=(32, 32, 32)), source="t").model, in_channels=1,
                      out_channels=2).eval()
    with pytest.raises(ValueError, match="one voxel per channel.*larger roi_size"):
        sliding_window_predict(net, torch.zeros(1, 1, 16, 16, 16), 16, tiling="roi")


@pytest.mark.parametrize(("kind", "option", "pattern"), [
    (DataKind.VOLUMES3D, {"overlay": True}, r"^--overlay: m\.pt is a volumes3d model; overlays are drawn for 2D"),
    (DataKind.IMAGES2D, {"dicom_seg": True}, r"^--dicom-seg: m\.pt is a 2D image model; DICOM-SEG"),
])
def test_outputs_a_model_kind_cannot_write_are_refused(tmp_path, kind, option, pattern):
    cfg = validate_config({"data": {"root": str(tmp_path)}, "model": {"spatial_dims": 2}}, source="t")
    loaded = Predictor(torch.nn.Identity(), cfg, LabelMap.from_mapping({0: "a", 1: "b"}), {}, cfg.infer,
                       torch.device("cpu"), kind, source="m.pt")
    with pytest.raises(ConfigError, match=pattern):
        predict_paths(loaded, [tmp_path], tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()


def test_an_image_file_given_to_a_volume_model_is_refused_before_any_case(tmp_path):
    cfg = validate_config({"data": {"root": str(tmp_path)}, "model": {"spatial_dims": 2}}, source="t")
    loaded = Predictor(torch.nn.Identity(), cfg, LabelMap.from_mapping({0: "a", 1: "b"}), {}, cfg.infer,
                       torch.device("cpu"), DataKind.VOLUMES3D, source="m.pt")
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"^.*x\.png: is a 2D image but checkpoint m\.pt segments volumes "
                                        r"\(volumes3d\); use a checkpoint trained with data\.kind images2d"):
        predict_paths(loaded, [png], tmp_path / "out")
    assert not (tmp_path / "out").exists()
