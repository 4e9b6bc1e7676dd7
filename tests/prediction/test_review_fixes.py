"""Review fixes: folders with stray files, series_uid in Predictor.predict, one-line errors for bad arguments."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from medseg.config.kinds import DataKind
from medseg.config.loading import validate_config
from medseg.data.labels import LabelMap
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.device import resolve_device
from medseg.errors import ConfigError, DataError
from medseg.io.dicom import list_series
from medseg.models.factory import build_model
from medseg.prediction.image import predict_image_classes
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume import find_volume_cases, predict_volume, predict_volumes


def _volume_predictor(tmp: Path) -> Predictor:
    """An untrained tiny 3D UNet (2 classes, values 0 and 1) at 8 mm: enough to run the volume path."""
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(tmp), "labels": {"classes": {0: "background", 1: "organ"}},
                 "spacing_mm": [8.0, 8.0, 8.0], "patch_size": [16, 16, 16]},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
    }, source="test")
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=1, out_channels=2).eval()
    settings = VolumePreprocessor.from_config(cfg.data).settings
    return Predictor(model, cfg, LabelMap.from_mapping({0: "background", 1: "organ"}), settings, cfg.infer,
                     torch.device("cpu"), DataKind.VOLUMES3D, source="organ.pt", in_channels=1)


def _image_predictor(tmp: Path) -> Predictor:
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(tmp), "image_size": [32, 32],
                 "labels": {"classes": {0: "background", 255: "polyp"}}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2]},
    }, source="test")
    model = build_model(cfg.model, in_channels=3, out_channels=2).eval()
    return Predictor(model, cfg, LabelMap.from_mapping({0: "background", 255: "polyp"}),
                     {"kind": "images2d", "color": "rgb", "image_size": [32, 32], "scale": 1 / 255},
                     cfg.infer, torch.device("cpu"), DataKind.IMAGES2D, source="polyp.pt", in_channels=3)


def _tiny_nifti(path: Path) -> Path:
    array = np.arange(12 * 10 * 8, dtype=np.int16).reshape(12, 10, 8) - 400
    nib.save(nib.Nifti1Image(array, np.diag([4.0, 4.0, 5.0, 1.0])), path)
    return path


def _series_copy(src: Path, dst: Path) -> str:
    """The DICOM series in ``src`` copied to ``dst`` as a new series (new series and instance UIDs)."""
    uid = generate_uid()
    dst.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"{uid[-6:]}_{file.name}")
    return uid


@pytest.fixture(scope="module")
def volume_predictor(tmp_path_factory) -> Predictor:
    return _volume_predictor(tmp_path_factory.mktemp("volume_model"))


@pytest.fixture(scope="module")
def image_predictor(tmp_path_factory) -> Predictor:
    return _image_predictor(tmp_path_factory.mktemp("image_model"))


# ------------------------------------------------------------------------- 1. folders with stray files
def test_stray_license_beside_a_volume_file_does_not_hide_it(volume_predictor, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _tiny_nifti(folder / "tiny.nii.gz")
    (folder / "LICENSE").write_text("MIT License\n")
    cases = find_volume_cases([folder])
    assert [(c.name, c.source, c.series_uid) for c in cases] == [("tiny", folder / "tiny.nii.gz", None)]
    report = predict_volumes(volume_predictor, [folder], tmp_path / "out", progress=False)
    assert report.ok, report.failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.json", "tiny.nii.gz"]
    out = nib.load(tmp_path / "out" / "tiny.nii.gz")
    assert out.shape == (12, 10, 8)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}


def test_dicom_seg_beside_a_series_subfolder_finds_the_series(shared_data):
    folder = shared_data / "dicom-seg-dcmqi"
    cases = find_volume_cases([folder])
    uid = list_series(folder / "ct")[0].series_uid
    assert [(c.name, c.source, c.series_uid) for c in cases] == [("ct", folder / "ct", uid)]


def test_stray_file_in_a_series_subfolder_and_unusable_dicom_are_skipped(shared_data, tmp_path, caplog):
    study = tmp_path / "study"
    shutil.copytree(shared_data / "dicom-seg-dcmqi" / "ct", study / "ct")
    (study / "ct" / "LICENSE").write_text("MIT License\n")
    (study / "notes").mkdir()
    (study / "notes" / "README").write_text("not DICOM\n")
    (study / "scout").mkdir()
    shutil.copy(next((study / "ct").glob("*.dcm")), study / "scout" / "one.dcm")  # one slice: no volume
    _tiny_nifti(study / "tiny.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medseg.prediction.volume_cases"):
        cases = find_volume_cases([study])
    assert [c.name for c in cases] == ["tiny", "ct"]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [str(study / "scout")]
    with pytest.raises(DataError, match=r"scout: no usable DICOM volume series \(see `medseg inspect .*scout`\)$"):
        find_volume_cases([study / "scout"])
    with pytest.raises(DataError, match=r"notes: no usable DICOM volume series \(see `medseg inspect"):
        find_volume_cases([study / "notes"])  # given alone, its files are looked at as DICOM (inspect says why not)
    (study / "notes" / "README").unlink()
    with pytest.raises(DataError, match=r"notes: nothing to segment \(no \.nii\.gz, .* DICOM series sub-folders\)$"):
        find_volume_cases([study / "notes"])


def test_series_files_and_volume_files_in_one_folder_are_all_cases(shared_data, tmp_path):
    folder = tmp_path / "scan"
    uid = _series_copy(shared_data / "dicom-seg-dcmqi" / "ct", folder)
    _tiny_nifti(folder / "tiny.nii.gz")
    assert [(c.name, c.series_uid) for c in find_volume_cases([folder])] == [("scan", uid), ("tiny", None)]
    _tiny_nifti(folder / "scan.nii.gz")  # would write scan.nii.gz twice
    with pytest.raises(DataError, match=r"would both write output 'scan'; rename one"):
        find_volume_cases([folder])


# ------------------------------------------------------------------------- 2. series_uid in predict
def test_predict_chooses_a_series_with_series_uid(shared_data, volume_predictor, image_predictor, tmp_path):
    folder = tmp_path / "two"
    first = _series_copy(shared_data / "dicom-seg-dcmqi" / "ct", folder)
    second = _series_copy(shared_data / "dicom-seg-dcmqi" / "ct", folder)
    with pytest.raises(DataError, match="2 volume series found, pass series_uid= to choose one"):
        volume_predictor.predict(folder)
    result = volume_predictor.predict(folder, series_uid=second)
    assert result.meta["series_uid"] == second and result.shape == (512, 512, 3)
    assert set(np.unique(result.array).tolist()) <= {0, 1}
    assert volume_predictor.predict(folder, series_uid=first).meta["series_uid"] == first
    with pytest.raises(ConfigError, match=r"series_uid: got '1\.2\.3' but polyp\.pt is a images2d model"):
        image_predictor.predict(np.zeros((8, 8, 3), np.uint8), series_uid="1.2.3")
    nifti = _tiny_nifti(tmp_path / "tiny.nii.gz")
    with pytest.raises(ConfigError, match=r"series_uid: got '1\.2\.3' but .*tiny\.nii\.gz is a file"):
        volume_predictor.predict(nifti, series_uid="1.2.3")
    with pytest.raises(ConfigError, match=r"series_uid: got '1\.2\.3' with a Volume"):
        predict_volume(volume_predictor, result, series_uid="1.2.3")


# ------------------------------------------------------------------------- 3. bad arguments
@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((0, 0, 3), np.uint8), r"^array: empty image \(shape \(0, 0, 3\)\); expected \(H, W\) or \(H, W, 3\)"),
    (np.zeros((4, 0), np.float32), r"^array: empty image \(shape \(4, 0\)\)"),
    (np.empty((4, 4, 3), dtype=object), r"^array: dtype object holds no pixel values; allowed: integer dtypes"),
    (np.full((4, 4), "a"), r"^array: dtype <U1 holds no pixel values; allowed: integer dtypes .* or float dtypes$"),
    (np.ones((4, 4), bool), r"^array: dtype bool holds no pixel values"),
    (np.zeros((4, 4, 3, 2), np.uint8), r"^array: shape \(4, 4, 3, 2\) is not a 2D image; expected \(H, W\)"),
    (np.zeros(7, np.uint8), r"^array: shape \(7,\) is not a 2D image"),
    (np.full((4, 4, 3), np.nan, np.float32), r"^array: holds NaN or infinite values"),
])
def test_bad_arrays_are_data_errors(image_predictor, array, message):
    with pytest.raises(DataError, match=message):
        image_predictor.predict(array)


def test_good_arrays_of_other_shapes_predict(image_predictor):
    for array in (np.zeros((9, 7, 3), np.uint8), np.zeros((9, 7), np.uint8), np.zeros((9, 7, 1), np.uint8),
                  np.zeros((9, 7, 4), np.uint8)):
        mask = image_predictor.predict(array)
        assert mask.shape == (9, 7) and set(np.unique(mask).tolist()) <= {0, 255}


@pytest.mark.parametrize("array", [np.zeros((9, 7), np.uint16), np.zeros((9, 7, 1), np.float64),
                                   np.zeros((9, 7, 4), np.int32)])
def test_arrays_of_another_dtype_than_the_training_images_are_refused(image_predictor, array):
    """The tiny model was trained on 8-bit images: uint16, float and int32 arrays would be scaled by a guess."""
    with pytest.raises(DataError, match=rf"^array: .*\({array.dtype.name}\) values, but this model's training "
                                        r"images were 8-bit \(uint8\); convert it"):
        image_predictor.predict(array)


@pytest.mark.parametrize("source", [None, [[0, 1], [1, 0]], 3.5])
def test_wrong_python_types_name_the_allowed_types(image_predictor, volume_predictor, source):
    allowed = r"^source: expected a path \(str or pathlib\.Path\), a numpy array or a medseg\.Volume, got "
    for predictor in (image_predictor, volume_predictor):
        if isinstance(source, list) and predictor is image_predictor:  # a list is one volume per input channel
            expected = (r"^source: a list \(one path or medseg\.Volume per input channel\) is taken by volume models "
                        r"only, this is a images2d model; give one path or numpy array$")
        elif isinstance(source, list):
            expected = (r"^source: a list holds one path \(str or pathlib\.Path\) or medseg\.Volume per input "
                        r"channel; got \['list', 'list'\]$")
        else:
            expected = allowed + type(source).__name__ + "$"
        with pytest.raises(TypeError, match=expected):
            predictor.predict(source)
    with pytest.raises(TypeError, match=r"^image: expected a path \(str or pathlib\.Path\) or a numpy array, got "):
        predict_image_classes(image_predictor, source)


@pytest.mark.parametrize("name", [None, 0, "gpu", "auto:0", "cuda:x", ""])
def test_bad_device_names_are_config_errors(name):
    with pytest.raises(ConfigError, match=r"^device: got .*; allowed: auto, cpu, cuda or cuda:N$"):
        resolve_device(name)


def test_cpu_with_an_index_is_accepted_as_torch_accepts_it():
    assert resolve_device("cpu:0") == torch.device("cpu") == resolve_device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_devices_is_a_config_error():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=rf"^device: got 'cuda:{count}' but this machine has {count} CUDA"):
        resolve_device(f"cuda:{count}")


# ------------------------------------------------------------------------- 5. folders given as one input
def test_volume_model_given_a_folder_of_volume_files(volume_predictor, tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a", "b"):
        _tiny_nifti(folder / f"{name}.nii.gz")
    expected = (rf"^{folder}: a folder of volume files, not one DICOM series; give one file, or use predict_paths / "
                r"`medseg predict` for a folder of cases$")
    with pytest.raises(DataError, match=expected):
        volume_predictor.predict(folder)
    with pytest.raises(DataError, match=expected):
        predict_volume(volume_predictor, folder)


def test_folder_of_volume_files_with_a_series_subfolder_still_reads_the_series(shared_data, volume_predictor):
    folder = shared_data / "dicom-seg-dcmqi"  # liver_seg.dcm beside ct/: the series is read, as before
    assert volume_predictor.predict(folder).shape == (512, 512, 3)


def test_image_model_given_a_folder(image_predictor, tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path}: is a folder; give one image file \(medseg predict handles "
                                        r"folders\)$"):
        image_predictor.predict(tmp_path)
    with pytest.raises(DataError, match=r"is a folder; give one image file"):
        predict_image_classes(image_predictor, str(tmp_path))
