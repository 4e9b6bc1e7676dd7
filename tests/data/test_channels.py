"""data.channels: the config (defaults by channel name, one-line refusals) and VolumePreprocessor over several
co-registered channel volumes (each normalised its own way, geometry checked, settings round trip)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseg.config.loading import validate_config
from medseg.data.labels import LabelMap
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import ConfigError, DataError
from medseg.io.volume import Volume


def _data(**data):
    return validate_config({"data": {"kind": "volumes3d", "root": "x", **data}, "model": {"spatial_dims": 3}}).data


def test_channel_defaults_follow_the_name_and_data_intensity_repeats_the_first():
    data = _data(channels=[{"name": "ct"}, {"name": "PET"}, {"name": "CT2", "intensity": "ct_window",
                                                            "windows": ["bone", "lung"]}])
    assert [(c.name, c.intensity, c.windows) for c in data.channels or []] == [
        ("ct", "ct_window", ["soft_tissue"]), ("PET", "zscore", None), ("CT2", "ct_window", ["bone", "lung"])]
    assert (data.intensity, data.windows) == ("ct_window", ["soft_tissue"])
    # a resolved config loads again
    again = validate_config({"data": data.model_dump(mode="json"), "model": {"spatial_dims": 3}}).data
    assert again == data
    pre = VolumePreprocessor.from_config(data)
    assert (pre.files_per_case, pre.in_channels) == (3, 1 + 1 + 2)
    assert pre.channel_naming() == "ct: <case>_0000, PET: <case>_0001, CT2: <case>_0002"
    assert _data(channels=[{"name": "T2"}]).intensity == "zscore"


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "images2d", "channels": [{"name": "CT"}]},
     "data.channels: several input channels (case_0000, case_0001 ...) are for volumes"),
    ({"channels": [{"name": "T1", "windows": ["bone"]}]},
     "data.channels.0.windows: given, but the channel's intensity is 'zscore'"),
    ({"channels": [{"name": "CT"}, {"name": "CT"}]}, "data.channels: channel names must be unique, got ['CT', 'CT']"),
    ({"windows": ["bone"], "channels": [{"name": "CT"}]},
     "data.channels: data.intensity and data.windows are set per channel with data.channels; leave them out"),
    ({"channels": [{"name": "CT", "intensity": "minmax"}]}, "data.channels.0.intensity"),
    ({"channels": []}, "data.channels"),
])
def test_bad_channels_are_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        validate_config({"data": {"kind": "volumes3d", "root": "x", **data}})
    assert message in str(err.value) and "\n" not in str(err.value)


def _volume(array, affine, path):
    return Volume(np.asarray(array, np.float32), affine, {"path": path})


def test_each_channel_is_normalised_its_own_way_on_the_first_channels_grid():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-300, 300, (4, 6, 8))
    mr = rng.normal(50, 7, (4, 6, 8))
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: turned to RAS by one flip of axis 0
    pre = VolumePreprocessor({"channels": [{"name": "CT", "intensity": "ct_window", "windows": [[0, 200]]},
                                           {"name": "MR", "intensity": "zscore"}],
                              "windows": [[0, 200]], "intensity": "ct_window", "spacing_mm": None})
    image, grid = pre.prepare_image([_volume(ct, affine, "c_0000"), _volume(mr, affine, "c_0001")])
    assert tuple(image.shape) == (2, 4, 6, 8) and grid.shape_out == (4, 6, 8)
    np.testing.assert_allclose(image[0].numpy(), np.clip((ct[::-1] + 100) / 200, 0, 1), atol=1e-6)
    np.testing.assert_allclose(image[1].numpy(), ((mr - mr.mean()) / mr.std(ddof=1))[::-1], atol=1e-4)
    again = VolumePreprocessor(pre.settings)
    assert again.settings == pre.settings and again.files_per_case == 2
    assert pre.settings["channels"][1] == {"name": "MR", "intensity": "zscore", "windows": []}
    with pytest.raises(DataError, match=r"c_0000: the model takes 2 input file\(s\) per case \(CT: <case>_0000, "
                       r"MR: <case>_0001\), got 1"):
        pre.prepare_image(_volume(ct, affine, "c_0000"))


def test_single_channel_settings_without_channels_keep_their_meaning():
    old = {"windows": [[40, 400]], "intensity": "ct_window", "spacing_mm": None, "orientation": "RAS"}
    pre = VolumePreprocessor(old)
    assert pre.files_per_case == 1 and pre.in_channels == 1 and pre.settings == old
    image, _ = pre.prepare_image(_volume(np.full((2, 2, 2), 40.0), np.eye(4), "a"))
    np.testing.assert_allclose(image.numpy(), 0.5)


def test_prepare_pair_refuses_channels_on_different_grids_naming_both_files(tmp_path):
    shape = (6, 6, 6)
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = 1
    files = []
    for index, spacing in enumerate((1.0, 1.2)):
        files.append(tmp_path / f"c_000{index}.nii.gz")
        nib.save(nib.Nifti1Image(np.arange(216, dtype=np.float32).reshape(shape), np.diag([spacing, 1, 1, 1])),
                 files[-1])
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "c.nii.gz")
    pre = VolumePreprocessor({"channels": [{"name": "A", "intensity": "zscore"}, {"name": "B", "intensity": "zscore"}],
                              "intensity": "zscore", "spacing_mm": None})
    with pytest.raises(DataError) as err:
        pre.prepare_pair(files, tmp_path / "c.nii.gz", LabelMap.from_mapping({0: "bg", 1: "x"}))
    assert str(err.value).startswith(f"channels {files[0]} and {files[1]}: geometry differs (spacing by 0.2 mm, "
                                     "origin by 0 mm, direction by 0; allowed 0.001 mm")
    assert "\n" not in str(err.value)
    x, y, grid = pre.prepare_pair(files[:1] * 2, tmp_path / "c.nii.gz", LabelMap.from_mapping({0: "bg", 1: "x"}))
    assert tuple(x.shape) == (2, *shape) and int(y.sum()) == 8
