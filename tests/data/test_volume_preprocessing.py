"""Volume preprocessing: orientation/spacing round trips on real CT, label mapping, geometry checks, pairing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config.schema import DataConfig
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.volume_dataset import PatchDataset, crop, prepare_cases
from medseg.data.volume_preprocessing import VolumePreprocessor, check_same_grid, label_classes, slice_axis_index
from medseg.errors import DataError
from medseg.io.volume import Volume, volume_case_name
from medseg.io.volume_io import read_volume

SPINE = ("spine-ct-totalseg", "example_ct.nii.gz", "totalseg_vertebrae.nii.gz")
VERSE = ("spine-ct-verse-cutout", "sub-ct_label-22_ct.nii.gz", "sub-ct_seg-vert_label-22_msk.nii.gz")
SPINE_LABELS = LabelMap.from_classes([
    ("background", [0]), ("S1", [26]), ("L5", [27, 24]), ("L4", [28, 23]), ("L3", [29, 22]), ("L2", [30, 21]),
    ("L1", [31, 20]), ("T12", [32, 19]), ("T11", [33, 18]),
])


def _pre(spacing: float | None, orientation: str = "RAS") -> VolumePreprocessor:
    return VolumePreprocessor({"kind": "volumes3d", "windows": ["bone", "soft_tissue"], "intensity": "ct_window",
                               "spacing_mm": None if spacing is None else [spacing] * 3,
                               "orientation": orientation})


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize(("case", "spacing", "orientation"), [
    (SPINE, 1.5, "RAS"), (SPINE, 2.0, "LPS"), (VERSE, 1.5, "RAS"), (VERSE, 1.2, "LPI"),
])
def test_round_trip_returns_original_grid(shared_data, case, spacing, orientation):
    folder, image_name, label_name = case
    image_path, label_path = shared_data / folder / image_name, shared_data / folder / label_name
    pre = _pre(spacing, orientation)
    image, classes, grid = pre.prepare_pair(image_path, label_path, SPINE_LABELS)
    assert image.shape == (2, *grid.shape_out) and classes.shape == grid.shape_out
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    np.testing.assert_allclose(grid.spacing_out, [spacing] * 3, rtol=0.05)
    truth = label_classes(read_volume(label_path), SPINE_LABELS)
    back = pre.invert_classes(classes, grid)
    assert back.shape == truth.shape and grid.shape == read_volume(image_path).shape
    np.testing.assert_array_equal(grid.affine, read_volume(image_path).affine)
    one_hot = torch.nn.functional.one_hot(classes.long(), SPINE_LABELS.num_classes).permute(3, 0, 1, 2).float()
    back_probs = pre.invert_probabilities(one_hot, grid)
    present = [c for c in range(1, SPINE_LABELS.num_classes) if (truth == c).any()]
    assert present
    for c in present:
        assert _dice(back == c, truth == c) >= 0.9, c
        assert _dice(back_probs == c, truth == c) >= 0.9, c
    if grid.shape_out == grid.oriented_shape:  # spacing unchanged: exact
        np.testing.assert_array_equal(back, truth)


def test_reorientation_is_exact_and_reaches_target(shared_data):
    vol = read_volume(shared_data / VERSE[0] / VERSE[2])
    pre = _pre(None, "RAS")
    grid = pre.plan(vol)
    assert "".join(nib.aff2axcodes(grid.oriented_affine)) == "RAS"
    assert "".join(nib.aff2axcodes(vol.affine)) == "PIR"
    classes = label_classes(vol, SPINE_LABELS)
    oriented = pre.prepare_label(vol, grid, SPINE_LABELS)
    np.testing.assert_array_equal(pre.invert_classes(oriented, grid), classes)
    # the same world point has the same label before and after reorientation
    ijk = np.array([10, 20, 30, 1.0])
    world = vol.affine @ ijk
    ijk_new = np.rint(np.linalg.solve(grid.oriented_affine, world)[:3]).astype(int)
    assert oriented[tuple(ijk_new)] == classes[10, 20, 30]


def test_several_source_values_map_to_one_class():
    # TotalSegmentator L3 = 29 and VerSe L3 = 22 are both class L3
    arr = np.array([0, 29, 22, 31, 20, 26], dtype=np.uint8).reshape(1, 2, 3)
    classes = label_classes(Volume(arr, np.eye(4)), SPINE_LABELS)
    l3, l1 = SPINE_LABELS.names.index("L3"), SPINE_LABELS.names.index("L1")
    assert classes.ravel().tolist() == [0, l3, l3, l1, l1, 1]
    assert SPINE_LABELS.to_values(classes).ravel().tolist() == [0, 29, 29, 31, 31, 26]


def test_unknown_label_value_names_file():
    vol = Volume(np.array([0, 99], dtype=np.uint8).reshape(1, 1, 2), np.eye(4), {"path": "lab.nii.gz"})
    with pytest.raises(DataError, match=r"lab\.nii\.gz.*99"):
        label_classes(vol, SPINE_LABELS)


def test_geometry_check_accepts_float_noise_and_rejects_real_differences():
    image = Volume(np.zeros((4, 4, 4), np.int16), np.diag([2.0, 2.0, 2.0, 1.0]), {"path": "img.nii.gz"})
    noisy = np.diag([2.0, 2.0, 2.0, 1.0])
    noisy[0, 3] = 1e-5
    check_same_grid(image, Volume(np.zeros((4, 4, 4), np.uint8), noisy))
    moved = np.diag([2.0, 2.0, 2.0, 1.0])
    moved[0, 3] = 0.5
    with pytest.raises(DataError, match=r"img\.nii\.gz.*lab\.nii\.gz.*origin"):
        check_same_grid(image, Volume(np.zeros((4, 4, 4), np.uint8), moved, {"path": "lab.nii.gz"}))
    with pytest.raises(DataError, match="shapes differ"):
        check_same_grid(image, Volume(np.zeros((4, 4, 5), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])))


def test_nan_voxels_and_4d_files_are_data_errors(tmp_path):
    vol = Volume(np.full((3, 3, 3), np.nan, np.float32), np.eye(4))
    with pytest.raises(DataError, match="NaN"):
        _pre(None).prepare_image(vol)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), path)
    with pytest.raises(DataError):
        _pre(None).prepare_pair(path, path, SPINE_LABELS)


def test_settings_are_json_safe_and_rebuild_the_same_preprocessor():
    import json

    cfg = DataConfig(kind="volumes3d", root="x", windows=["bone", {"center_hu": 40, "width_hu": 400}],
                     spacing_mm=(1.5, 1.5, 2.0), orientation="lps")
    pre = VolumePreprocessor.from_config(cfg)
    settings = json.loads(json.dumps(pre.settings))
    assert settings["windows"] == [[400.0, 1800.0], [40.0, 400.0]] and settings["orientation"] == "LPS"
    assert VolumePreprocessor(settings).settings == pre.settings and pre.in_channels == 2


def test_slice_axis_index():
    assert [slice_axis_index("RAS", a) for a in ("axial", "sagittal", "coronal")] == [2, 0, 1]
    assert slice_axis_index("SLP", "axial") == 0


def _write(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_pairing_nnunet_channel_suffix_and_list(tmp_path):
    img = np.zeros((8, 8, 8), np.int16)
    lab = np.zeros((8, 8, 8), np.uint8)
    _write(tmp_path / "imagesTr" / "la_001_0000.nii.gz", img)
    _write(tmp_path / "labelsTr" / "la_001.nii.gz", lab)
    _write(tmp_path / "imagesTr" / "la_002.nii.gz", img)
    _write(tmp_path / "labelsTr" / "la_002.nii.gz", lab)
    cfg = DataConfig(kind="volumes3d", root=tmp_path, images_dir="imagesTr", masks_dir="labelsTr")
    pairs = find_pairs_from_config(cfg)
    assert [p.case_id for p in pairs] == ["la_001", "la_002"]
    (tmp_path / "pairs.csv").write_text("image,mask\nimagesTr/la_002.nii.gz,labelsTr/la_002.nii.gz\n")
    listed = find_pairs_from_config(cfg.model_copy(update={"pairing": "list", "pair_list": tmp_path / "pairs.csv"}))
    assert [(p.case_id, p.mask.name) for p in listed] == [("la_002", "la_002.nii.gz")]
    (tmp_path / "labelsTr" / "la_002.nii.gz").unlink()
    with pytest.raises(DataError, match="la_002"):
        find_pairs_from_config(cfg)
    assert volume_case_name("a/b.c.nii.gz") == "b.c" and volume_case_name("x.mha") == "x"


def test_patches_are_seeded_padded_and_foreground_biased(tmp_path):
    lab = np.zeros((20, 12, 10), np.uint8)
    lab[15:18, 2:4, 3:5] = 29
    img = np.full(lab.shape, -1000, np.int16)
    _write(tmp_path / "images" / "a.nii.gz", img)
    _write(tmp_path / "masks" / "a.nii.gz", lab)
    cfg = DataConfig(kind="volumes3d", root=tmp_path, spacing_mm=None)
    cases = prepare_cases(find_pairs_from_config(cfg), VolumePreprocessor.from_config(cfg), SPINE_LABELS)
    kwargs = {"patch_size": (8, 16, 8), "samples_per_volume": 20, "foreground_fraction": 1.0}
    a, b = PatchDataset(cases, seed=3, **kwargs), PatchDataset(cases, seed=3, **kwargs)
    assert a.starts == b.starts and len(a) == 20
    for i in range(len(a)):
        item = a[i]
        assert item["image"].shape == (1, 8, 16, 8) and item["label"].shape == (1, 8, 16, 8)
        assert item["label"].dtype == torch.int64 and (item["label"] > 0).any()
    t = torch.arange(6).reshape(1, 2, 3)
    assert crop(t, (-1, 1), (3, 3)).tolist() == [[[0, 0, 0], [1, 2, 0], [4, 5, 0]]]


def test_patch_augmentation_depends_only_on_seed_and_index(tmp_path):
    from medseg.config.schema import AugmentConfig
    from medseg.data.augmentation import build_train_transforms

    lab = np.zeros((24, 24, 24), np.uint8)
    lab[8:16, 8:16, 8:16] = 30
    img = np.where(lab > 0, 400, -50).astype(np.int16)
    _write(tmp_path / "images" / "a.nii.gz", img)
    _write(tmp_path / "masks" / "a.nii.gz", lab)
    cfg = DataConfig(kind="volumes3d", root=tmp_path, spacing_mm=None)
    cases = prepare_cases(find_pairs_from_config(cfg), VolumePreprocessor.from_config(cfg), SPINE_LABELS)
    transform = build_train_transforms(AugmentConfig(probability=1.0), spatial_dims=3)
    ds = PatchDataset(cases, patch_size=(16, 16, 16), samples_per_volume=3, foreground_fraction=0.5, seed=5,
                      transform=transform)
    first = [ds[i]["image"] for i in (2, 0, 1)]
    again = [ds[i]["image"] for i in (0, 1, 2)]
    torch.testing.assert_close(first[0], again[2], rtol=0, atol=0)
    torch.testing.assert_close(first[1], again[0], rtol=0, atol=0)
