"""Per-structure statistics: hand-computed values on a synthetic volume with a flipped, permuted affine; 2D masks;
agreement with SimpleITK on a real CT vertebra label map; ``medseg predict --statistics`` end to end, resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.data.labels import LabelMap
from medseg.errors import DataError
from medseg.io.images import read_image, read_mask
from medseg.io.volume import Volume
from medseg.io.volume_io import read_volume
from medseg.prediction.predictor import Predictor
from medseg.prediction.statistics import (
    IMAGE_COLUMNS,
    VOLUME_COLUMNS,
    mask_statistics,
    structure_statistics,
)
from medseg.prediction.statistics_table import read_statistics_csv

runner = CliRunner()

# i -> -x (0.5 mm), j -> +z (1.5 mm), k -> +y (2.0 mm): a flip, an axis permutation and an origin.
# RAS of voxel (i, j, k) = (10 - 0.5 i, 2 k - 20, 1.5 j + 30); one voxel is 0.5 * 1.5 * 2 = 1.5 mm3.
AFFINE = np.array([[-0.5, 0, 0, 10.0], [0, 0, 2.0, -20.0], [0, 1.5, 0, 30.0], [0, 0, 0, 1]])
LABELS = LabelMap.from_mapping({0: "background", 5: "box", 7: "cubes", 9: "absent", 11: "diagonal"})


def _phantom() -> tuple[Volume, Volume]:
    image = np.full((10, 12, 14), -1000.0)
    labels = np.zeros((10, 12, 14), np.int16)
    image[2:5, 3:7, 4:9] = 100 + np.arange(60).reshape(3, 4, 5)  # box: 3 x 4 x 5 voxels, values 100..159
    labels[2:5, 3:7, 4:9] = 5
    image[0:2, 0:2, 0:2], image[6:8, 8:10, 10:12] = -50, 50  # two separate 2x2x2 cubes, one at the corner
    labels[0:2, 0:2, 0:2] = labels[6:8, 8:10, 10:12] = 7
    image[8, 1, 12], image[9, 2, 13] = 7, 9  # two voxels meeting at a corner only, one on the i = 9 border
    labels[8, 1, 12] = labels[9, 2, 13] = 11
    return Volume(image, AFFINE, {"path": "ct"}), Volume(labels, AFFINE, {"path": "seg"})


def test_synthetic_volume_hand_computed():
    box, cubes, absent, diagonal = structure_statistics(*_phantom(), LABELS)
    assert (box.index, box.name, box.value) == (1, "box", 5)
    assert (box.voxels, box.volume_mm3, box.volume_ml) == (60, 90.0, 0.09)
    i = box.intensity
    assert (i.mean, i.median, i.min, i.max) == (129.5, 129.5, 100.0, 159.0)
    assert i.std == pytest.approx(math.sqrt((60**2 - 1) / 12), abs=1e-12)  # population std of 60 consecutive values
    assert (i.p05, i.p95) == (pytest.approx(100 + 0.05 * 59), pytest.approx(100 + 0.95 * 59))  # linear percentiles
    assert (box.bbox_min, box.bbox_max, box.extent_mm) == ((2, 3, 4), (4, 6, 8), (1.5, 6.0, 10.0))
    assert box.centroid_ijk == (3.0, 4.5, 6.0)
    assert box.centroid_ras_mm == (10 - 0.5 * 3, 2 * 6 - 20, 1.5 * 4.5 + 30) == (8.5, -8.0, 36.75)
    assert box.centroid_lps_mm == (-8.5, 8.0, 36.75)
    assert (box.components, box.touches_border) == (1, False)

    assert (cubes.voxels, cubes.volume_mm3) == (16, 24.0)
    c = cubes.intensity
    assert (c.mean, c.std, c.median, c.min, c.max, c.p05, c.p95) == (0.0, 50.0, 0.0, -50.0, 50.0, -50.0, 50.0)
    assert (cubes.bbox_min, cubes.bbox_max, cubes.extent_mm) == ((0, 0, 0), (7, 9, 11), (4.0, 15.0, 24.0))
    assert cubes.centroid_ijk == (3.5, 4.5, 5.5)  # mean of the cube centres (0.5, 0.5, 0.5) and (6.5, 8.5, 10.5)
    assert cubes.centroid_ras_mm == (8.25, -9.0, 36.75) and cubes.centroid_lps_mm == (-8.25, 9.0, 36.75)
    assert (cubes.components, cubes.touches_border) == (2, True)

    # 26-connectivity: corner neighbours are one component (6-connectivity would count 2)
    d = diagonal.intensity
    assert (diagonal.voxels, diagonal.volume_mm3, diagonal.components, diagonal.touches_border) == (2, 3.0, 1, True)
    assert (d.mean, d.std, d.median, d.min, d.max) == (8.0, 1.0, 8.0, 7.0, 9.0)
    assert (d.p05, d.p95) == (pytest.approx(7.1), pytest.approx(8.9))
    assert diagonal.extent_mm == (1.0, 3.0, 4.0) and diagonal.centroid_ras_mm == (5.75, 5.0, 32.25)

    assert (absent.index, absent.voxels, absent.volume_mm3, absent.volume_ml) == (3, 0, 0.0, 0.0)
    assert (absent.intensity, absent.bbox_min, absent.centroid_ras_mm, absent.components) == (None, None, None, 0)
    assert absent.touches_border is False
    row = absent.as_row()
    assert list(row) == list(VOLUME_COLUMNS)
    assert [k for k, v in row.items() if v is None] == [
        c for c in VOLUME_COLUMNS if c.startswith(("intensity_", "bbox_", "extent_", "centroid_"))]


def test_row_flattens_every_field_in_column_order():
    box = structure_statistics(*_phantom(), LABELS)[0]
    row = box.as_row()
    assert list(row) == list(VOLUME_COLUMNS)
    assert (row["bbox_max_i"], row["bbox_max_j"], row["bbox_max_k"], row["extent_k_mm"]) == (4, 6, 8, 10.0)
    assert (row["centroid_ras_y_mm"], row["centroid_lps_x_mm"], row["intensity_p05"]) == (-8.0, -8.5, box.intensity.p05)
    assert json.loads(json.dumps(row)) == row  # plain Python values only


def test_grid_and_argument_errors():
    image, labels = _phantom()
    shift = np.zeros((4, 4))
    shift[:3, 3] = 0.01
    moved = Volume(labels.array, AFFINE + shift, {"path": "seg.nii.gz"})
    with pytest.raises(DataError, match=r"^seg\.nii\.gz: label map affine differs from the image's by up to 0\.01 mm"):
        structure_statistics(image, moved, LABELS)
    small = Volume(labels.array[:5], AFFINE, {"path": "seg.nii.gz"})
    with pytest.raises(DataError, match=r"^seg\.nii\.gz: label map has shape \(5, 12, 14\) but the image has "
                                        r"\(10, 12, 14\)"):
        structure_statistics(image, small, LABELS)
    # 1e-4 mm (a float32 round trip of the affine is far less) still counts as the same grid
    nudged = Volume(labels.array, AFFINE + shift / 100)
    assert structure_statistics(image, nudged, LABELS)[0].voxels == 60
    with pytest.raises(DataError, match=r"seg: .*13"):
        structure_statistics(image, Volume(np.where(labels.array == 11, 13, labels.array), AFFINE, {"path": "seg"}),
                             LABELS)
    with pytest.raises(TypeError, match=r"^labels: expected a Volume, got ndarray$"):
        structure_statistics(image, labels.array, LABELS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^label_map: expected a LabelMap, got dict$"):
        structure_statistics(image, labels, {0: "background"})  # type: ignore[arg-type]


def test_mask_statistics_hand_computed():
    gray = np.zeros((6, 8), np.uint8)
    mask = np.zeros((6, 8), np.uint8)
    gray[1:3, 2:5] = [[10, 20, 30], [40, 50, 60]]  # a 2 x 3 blob
    mask[1:3, 2:5] = 255
    gray[5, 7], mask[5, 7] = 200, 255  # a pixel in the corner, its own component
    gray[4, 6], mask[4, 6] = 100, 128  # class "other": one pixel diagonal to the corner one
    lm = LabelMap.from_mapping({0: "background", 255: "polyp", 128: "other", 64: "absent"})
    polyp, other, absent = mask_statistics(gray, mask, lm)
    assert (polyp.pixels, polyp.bbox_min, polyp.bbox_max, polyp.components, polyp.touches_border) == (
        7, (1, 2), (5, 7), 2, True)
    values = np.array([10, 20, 30, 40, 50, 60, 200.0])
    assert polyp.intensity.mean == pytest.approx(values.mean()) and polyp.intensity.max == 200.0
    assert polyp.intensity.median == 40.0 and polyp.intensity.std == pytest.approx(values.std())
    assert polyp.centroid == pytest.approx(((1 * 3 + 2 * 3 + 5) / 7, (2 + 3 + 4) * 2 / 7 + 1))
    assert (other.pixels, other.components, other.touches_border, other.centroid) == (1, 1, False, (4.0, 6.0))
    assert (absent.pixels, absent.intensity, absent.components, absent.touches_border) == (0, None, 0, False)
    assert list(polyp.as_row()) == list(IMAGE_COLUMNS)
    with pytest.raises(DataError, match=r"needs a 2D gray image and a mask of its shape, got \(6, 8\) and \(6, 7\)"):
        mask_statistics(gray, mask[:, :7], lm)


def test_real_ct_vertebrae_agree_with_simpleitk(shared_data):
    sitk = pytest.importorskip("SimpleITK")  # a declared dependency of medseg, always there
    folder = shared_data / "spine-ct-totalseg"
    ct, seg = read_volume(folder / "example_ct.nii.gz"), read_volume(folder / "totalseg_vertebrae.nii.gz")
    names = {26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11"}
    stats = structure_statistics(ct, seg, LabelMap.from_mapping({0: "background", **names}))
    image, labels = sitk.ReadImage(str(folder / "example_ct.nii.gz")), sitk.ReadImage(
        str(folder / "totalseg_vertebrae.nii.gz"))
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labels)
    values = sitk.LabelStatisticsImageFilter()
    values.Execute(image, labels)
    assert [s.name for s in stats] == list(names.values())
    for s in stats:
        v, n = s.value, s.voxels
        assert n == shape.GetNumberOfPixels(v) == values.GetCount(v) > 0
        assert s.volume_mm3 == pytest.approx(shape.GetPhysicalSize(v), rel=1e-12)
        assert s.volume_ml == pytest.approx(shape.GetPhysicalSize(v) / 1000, rel=1e-12)
        assert s.centroid_lps_mm == pytest.approx(shape.GetCentroid(v), abs=1e-6)
        assert s.intensity.mean == pytest.approx(values.GetMean(v), rel=1e-12)
        assert (s.intensity.min, s.intensity.max) == (values.GetMinimum(v), values.GetMaximum(v))
        # ITK's sigma divides by n - 1; ours is the population std (n)
        assert s.intensity.std == pytest.approx(values.GetSigma(v) * math.sqrt((n - 1) / n), rel=1e-9)
        x0, x1, y0, y1, z0, z1 = values.GetBoundingBox(v)  # ITK index order x, y, z = i, j, k
        assert (s.bbox_min, s.bbox_max) == ((x0, y0, z0), (x1, y1, z1))
        binary = sitk.BinaryThreshold(labels, v, v, 1, 0)
        cc = sitk.ConnectedComponentImageFilter()
        cc.SetFullyConnected(True)  # 26-connectivity
        cc.Execute(binary)
        assert s.components == cc.GetObjectCount()
        mask = seg.array == v
        border = any(np.take(mask, end, axis=a).any() for a in range(3) for end in (0, -1))
        assert s.touches_border == border
    assert [s.touches_border for s in stats][-2:] == [True, True]  # T12 and T11 reach the top slice


# ------------------------------------------------------------------------------------------- end to end


def _sidecar_rows(out: Path) -> list[dict]:
    rows = []
    for sidecar in sorted(out.glob("*.json")):
        data = json.loads(sidecar.read_text())
        rows += [{"case": data["case"], **row} for row in data["statistics"]["structures"]]
    return rows


def _predict(args: list[str]) -> str:
    result = runner.invoke(app, ["predict", *args, "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_statistics_csv_matches_sidecars_and_survives_a_resume(ckpt3d, tmp_path):
    ckpt, images = ckpt3d
    cases = sorted(p.name.removesuffix(".nii.gz") for p in images.glob("*.nii.gz"))
    out = tmp_path / "out"
    _predict([str(ckpt), str(images), "-o", str(out), "--statistics"])
    table = read_statistics_csv(out / "statistics.csv")
    assert len(table) == len(cases) * 3  # cases x structures (background excluded)
    assert [(r["case"], r["name"]) for r in table] == [(c, f"v{v}") for c in cases for v in (26, 27, 28)]
    assert table == _sidecar_rows(out)  # every value equal, None as empty cells, booleans kept
    assert list(table[0]) == ["case", *VOLUME_COLUMNS]

    # the sidecar's statistics equal those recomputed from the written label map and the input
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    first = cases[0]
    again = structure_statistics(read_volume(images / f"{first}.nii.gz"), read_volume(out / f"{first}.nii.gz"),
                                 predictor.labels)
    assert [s.as_row() for s in again] == json.loads((out / f"{first}.json").read_text())["statistics"]["structures"]
    sidecar = json.loads((out / f"{first}.json").read_text())
    assert [c["voxels"] for c in sidecar["classes"][1:]] == [s.voxels for s in again]
    assert sidecar["statistics"]["connectivity"] == 26

    # interrupted batch: one case's outputs gone and the table too; the rerun redoes one case, the table covers all
    (out / f"{first}.nii.gz").unlink()
    (out / f"{first}.json").unlink()
    (out / "statistics.csv").unlink()
    _predict([str(ckpt), str(images), "-o", str(out), "--statistics"])
    assert read_statistics_csv(out / "statistics.csv") == table


def test_statistics_added_to_outputs_predicted_without_them(ckpt3d, tmp_path):
    ckpt, images = ckpt3d
    plain, direct = tmp_path / "plain", tmp_path / "direct"
    _predict([str(ckpt), str(images), "-o", str(plain)])
    assert not (plain / "statistics.csv").exists()
    before = {p.name: json.loads(p.read_text()) for p in plain.glob("*.json")}
    assert all("statistics" not in d for d in before.values())
    output = _predict([str(ckpt), str(images), "-o", str(plain), "--statistics"])  # nothing predicted again
    assert "2 existing skipped" in output
    _predict([str(ckpt), str(images), "-o", str(direct), "--statistics"])
    assert read_statistics_csv(plain / "statistics.csv") == read_statistics_csv(direct / "statistics.csv")
    for name, old in before.items():  # the sidecar's other fields are kept
        new = json.loads((plain / name).read_text())
        assert {k: v for k, v in new.items() if k != "statistics"} == old


def test_unusable_sidecar_fails_its_case_with_one_line(ckpt3d, tmp_path):
    ckpt, images = ckpt3d
    out = tmp_path / "out"
    _predict([str(ckpt), str(images), "-o", str(out), "--statistics"])
    victim = sorted(out.glob("*.json"))[0]
    data = json.loads(victim.read_text())
    data["statistics"]["structures"][0].pop("voxels")
    victim.write_text(json.dumps(data))
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--statistics", "--device", "cpu"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{victim}: its 'statistics' section does not hold the fields this medseg writes" in result.output
    assert len(read_statistics_csv(out / "statistics.csv")) == 3  # the other case is still in the table


def test_cli_statistics_for_2d_images(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    out = tmp_path / "out"
    _predict([str(ckpt), str(images), "-o", str(out), "--statistics"])
    names = sorted(p.stem for p in images.iterdir())
    table = read_statistics_csv(out / "statistics.csv")
    assert [(r["case"], r["name"]) for r in table] == [(n, "polyp") for n in names]
    assert table == _sidecar_rows(out) and list(table[0]) == ["case", *IMAGE_COLUMNS]
    lm = LabelMap.from_mapping({0: "background", 255: "polyp"})
    for row in table:  # recomputed from the written mask and the input's luminance
        source = next(images.glob(f"{row['case']}.*"))
        (stats,) = mask_statistics(read_image(source, mode="L"), read_mask(out / f"{row['case']}.png"), lm)
        assert {"case": row["case"], **stats.as_row()} == row
    (out / f"{names[0]}.png").unlink()
    (out / "statistics.csv").unlink()
    _predict([str(ckpt), str(images), "-o", str(out), "--statistics"])
    assert read_statistics_csv(out / "statistics.csv") == table
