"""medseg plan: fingerprints and planned configs on data whose sizes we know."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.config.schema import ModelConfig
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.data.synthetic.spine import make_spine_dataset
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.planning.fingerprint import detect_layout, fingerprint
from medseg.planning.memory import training_bytes
from medseg.planning.planner import MEMORY_SHARE, parse_device_memory, plan_dataset


@pytest.fixture(scope="module")
def spine_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_spine_dataset(tmp_path_factory.mktemp("spine") / "spine", n_cases=3, shape=(48, 40, 64),
                              spacing=(2.0, 2.0, 2.0), n_vertebrae=3)


def _write(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def test_spine_fingerprint_matches_numpy(spine_set: Path, tmp_path: Path) -> None:
    fp = fingerprint(detect_layout(spine_set))
    assert [c.case for c in fp.cases] == ["case_000", "case_001", "case_002"]
    for case in fp.cases:
        image = nib.load(spine_set / "imagesTr" / f"{case.case}.nii.gz")
        label = np.asarray(nib.load(spine_set / "labelsTr" / f"{case.case}.nii.gz").dataobj)
        assert case.shape == list(image.shape) and case.spacing == [2.0, 2.0, 2.0] and case.orientation == "RAS"
        values, counts = np.unique(label, return_counts=True)
        assert case.label_voxels == {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        fg = np.asarray(image.dataobj)[label != 0].astype(np.float64)
        assert case.intensity is not None
        assert case.intensity["min"] == pytest.approx(fg.min()) and case.intensity["max"] == pytest.approx(fg.max())
        if fg.size <= 10_000:  # every foreground voxel is in the sample: exact percentiles
            assert case.intensity["p99_5"] == pytest.approx(np.percentile(fg, 99.5), abs=1e-3)
    assert fp.modality == "CT"
    assert set(fp.label_values) == {0, 26, 27, 28}
    assert all(v["cases"] == 3 for v in fp.label_values.values())


def test_spine_plan_values(spine_set: Path, tmp_path: Path) -> None:
    result = plan_dataset(spine_set, tmp_path / "spine.yaml", device_memory="8GB")
    cfg = load_config(result.config_path)
    fp = json.loads(result.fingerprint_path.read_text())
    assert cfg.data.spacing_mm == (2.0, 2.0, 2.0)  # every case is 2 mm
    shapes = np.asarray([c["shape"] for c in fp["cases"]], float)
    median = np.median(shapes, axis=0)
    levels = len(cfg.model.strides)
    assert levels == int(math.floor(math.log2(median.min() / 8)))  # bottom keeps >= 8 voxels
    divisor = 2**levels
    expected = [max(2 * divisor, round(m / divisor) * divisor) for m in median]  # fits 8 GB: no shrinking
    assert list(cfg.data.patch_size) == expected and cfg.infer.roi_size == tuple(expected)
    lo, hi = fp["intensity"]["p00_5"], fp["intensity"]["p99_5"]
    window = cfg.data.windows[0]
    assert cfg.data.intensity == "ct_window"
    assert window.center_hu == pytest.approx((lo + hi) / 2, abs=0.05)
    assert window.width_hu == pytest.approx(hi - lo, abs=0.05)
    assert [c.values for c in cfg.data.labels.classes or []] == [[0], [26], [27], [28]]
    assert cfg.data.augment.flip is False  # several ordered classes
    text = result.config_path.read_text()
    assert "# median spacing per axis" in text and "fits the memory as it is" in text


def test_plan_is_reproducible(spine_set: Path, tmp_path: Path) -> None:
    a = plan_dataset(spine_set, tmp_path / "a" / "plan.yaml", device_memory="cpu")
    b = plan_dataset(spine_set, tmp_path / "b" / "plan.yaml", device_memory="cpu")
    assert a.config_path.read_bytes() == b.config_path.read_bytes()
    assert a.fingerprint_path.read_bytes() == b.fingerprint_path.read_bytes()


def test_anisotropic_set_uses_tenth_percentile(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    zs = [5.0, 5.0, 4.0, 1.0, 5.0]
    for i, z in enumerate(zs):
        image = rng.normal(40, 10, (32, 32, 12)).astype(np.int16)
        image[0, 0, 0] = -1000
        label = np.zeros((32, 32, 12), np.uint8)
        label[8:20, 8:20, 3:8] = 1
        _write(tmp_path / "d" / "imagesTr" / f"c{i}_0000.nii.gz", image, (0.8, 0.8, z))
        _write(tmp_path / "d" / "labelsTr" / f"c{i}.nii.gz", label, (0.8, 0.8, z))
    cfg = load_config(plan_dataset(tmp_path / "d", tmp_path / "p.yaml", device_memory="cpu").config_path)
    assert cfg.data.spacing_mm == (0.8, 0.8, pytest.approx(np.percentile(zs, 10)))
    assert np.median(zs) / 0.8 > 3  # the rule was triggered, not the median


def test_dataset_json_labels_and_mr_modality(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(2):
        image = rng.normal(300, 50, (24, 24, 24)).astype(np.float32)
        label = np.zeros((24, 24, 24), np.uint8)
        label[4:12, 4:12, 4:12] = 1
        label[14:20, 14:20, 14:20] = 2
        _write(tmp_path / "d" / "imagesTr" / f"c{i}_0000.nii.gz", image, (1.0, 1.0, 1.0))
        _write(tmp_path / "d" / "labelsTr" / f"c{i}.nii.gz", label, (1.0, 1.0, 1.0))
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T2"}, "labels": {"background": 0, "prostate": 1, "lesion": 2}}))
    cfg = load_config(plan_dataset(tmp_path / "d", tmp_path / "p.yaml", device_memory="cpu").config_path)
    assert [c.name for c in cfg.data.labels.classes or []] == ["background", "prostate", "lesion"]
    assert cfg.data.intensity == "zscore"


def test_polyp_plan_values(tmp_path: Path) -> None:
    root = make_polyp_dataset(tmp_path / "polyp", n=6, size=(100, 140))
    cfg = load_config(plan_dataset(root, tmp_path / "p.yaml", device_memory="cpu").config_path)
    # median 100x140 fits the CPU cap (192): no scaling; 100 -> 3 halvings (100/8 = 12.5 >= 8), multiples of 8
    assert cfg.model.strides == (2, 2, 2) and cfg.data.image_size == (96, 144)
    assert cfg.data.color == "rgb" and cfg.data.augment.rotate90 is True
    assert [c.values for c in cfg.data.labels.classes or []] == [[0], [255]]
    assert cfg.train.batch_size == 2  # 5 % of 6 images is under one: the floor of 2


def test_kvasir_jpeg_masks_get_a_tolerance(kvasir: Path, tmp_path: Path) -> None:
    result = plan_dataset(kvasir, tmp_path / "k.yaml", device_memory="cpu")
    cfg = load_config(result.config_path)
    assert cfg.data.labels.tolerance == 20 and cfg.data.labels.classes is None
    assert max(cfg.data.image_size) <= 192 and all(s % 16 == 0 for s in cfg.data.image_size)
    assert cfg.train.batch_size == 7  # 5 % of 150 images


def test_shared_spine_ct_three_mm_and_fits(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "spine"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "ct_0000.nii.gz").symlink_to(shared_data / "spine-ct-totalseg" / "example_ct.nii.gz")
    (root / "labelsTr" / "ct.nii.gz").symlink_to(shared_data / "spine-ct-totalseg" / "totalseg_vertebrae.nii.gz")
    memory = parse_device_memory("2.3GB")  # small enough that the median shape (122, 101, 112) must shrink
    cfg = load_config(plan_dataset(root, tmp_path / "p.yaml", device_memory="2.3GB").config_path)
    assert cfg.data.spacing_mm == (3.0, 3.0, 3.0)
    divisor = math.prod(cfg.model.strides)
    assert all(p % divisor == 0 for p in cfg.data.patch_size)
    assert np.prod(cfg.data.patch_size) < 120 * 104 * 112  # it did shrink
    need = training_bytes(cfg.model, in_channels=1, out_channels=9, patch=cfg.data.patch_size,
                          batch_size=cfg.train.batch_size, device="cuda")
    assert need <= memory.bytes * MEMORY_SHARE
    bigger = list(cfg.data.patch_size)
    bigger[int(np.argmax(bigger))] += divisor  # one step larger along the largest axis no longer fits
    assert training_bytes(cfg.model, in_channels=1, out_channels=9, patch=tuple(bigger),
                          batch_size=cfg.train.batch_size, device="cuda") > memory.bytes * MEMORY_SHARE
    assert len(cfg.data.labels.classes or []) == 9


def test_memory_probe_scales_like_a_direct_measurement() -> None:
    from medseg.models.factory import build_model

    cfg = ModelConfig(spatial_dims=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance")
    estimate = training_bytes(cfg, in_channels=1, out_channels=3, patch=(32, 16, 24), batch_size=2, device="cpu")
    net = build_model(cfg, in_channels=1, out_channels=3)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.zeros(2, 1, 32, 16, 24))
    params = sum(p.numel() for p in net.parameters())
    assert estimate == pytest.approx(1.3 * (saved + 16 * params), rel=0.03)  # probed at 8^3 and 12^3 only


@pytest.mark.parametrize("text", ["12XB", "-4GB", "0", "nan GB", "GB", "lots"])
def test_bad_device_memory(text: str) -> None:
    with pytest.raises(ConfigError, match="--device-memory"):
        parse_device_memory(text)


def test_doors(spine_set: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    ok = runner.invoke(app, ["plan", str(spine_set), "-o", str(out), "--device-memory", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "spacing_mm: [2.0, 2.0, 2.0]" in ok.output
    again = runner.invoke(app, ["plan", str(spine_set), "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    with pytest.raises(OutputExistsError):
        plan_dataset(spine_set, out)
    bad = runner.invoke(app, ["plan", str(tmp_path / "none"), "-o", str(tmp_path / "q.yaml")])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    kind = runner.invoke(app, ["plan", str(spine_set), "--kind", "slices2d", "-o", str(tmp_path / "q.yaml")])
    assert kind.exit_code == 2 and "--kind" in kind.output


def test_refuses_a_missing_channel_and_empty_masks(tmp_path: Path) -> None:
    image = np.full((16, 16, 16), -1000, np.int16)
    _write(tmp_path / "a" / "imagesTr" / "c_0000.nii.gz", image, (1.0, 1.0, 1.0))
    _write(tmp_path / "a" / "imagesTr" / "c_0001.nii.gz", image, (1.0, 1.0, 1.0))
    _write(tmp_path / "a" / "imagesTr" / "d_0000.nii.gz", image, (1.0, 1.0, 1.0))
    for case in "cd":
        _write(tmp_path / "a" / "labelsTr" / f"{case}.nii.gz", np.ones((16, 16, 16), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"case d: has _0000; other cases have _0000, _0001 "
                       r"\(missing d_0001\.nii\.gz\)"):
        plan_dataset(tmp_path / "a", tmp_path / "a.yaml")
    _write(tmp_path / "b" / "imagesTr" / "c_0000.nii.gz", image, (1.0, 1.0, 1.0))
    _write(tmp_path / "b" / "labelsTr" / "c.nii.gz", np.zeros((16, 16, 16), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="no foreground"):
        plan_dataset(tmp_path / "b", tmp_path / "b.yaml")


def _two_channel_set(root: Path, dataset_json: dict | None) -> None:
    """3 cases: channel 0 CT-like (air -1000 HU, foreground 40..240 HU), channel 1 noise around 500."""
    rng = np.random.default_rng(3)
    for i in range(3):
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:10, 4:10, 4:10] = 1
        ct = np.where(label == 1, rng.uniform(40, 240, label.shape), -1000.0).astype(np.float32)
        other = rng.normal(500, 30, label.shape).astype(np.float32)
        _write(root / "imagesTr" / f"c{i}_0000.nii.gz", ct, (1.0, 1.0, 1.0))
        _write(root / "imagesTr" / f"c{i}_0001.nii.gz", other, (1.0, 1.0, 1.0))
        _write(root / "labelsTr" / f"c{i}.nii.gz", label, (1.0, 1.0, 1.0))
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))


def test_two_channel_set_plans_both_channels_with_their_normalisation(tmp_path: Path) -> None:
    _two_channel_set(tmp_path / "d", {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "x": 1}})
    result = plan_dataset(tmp_path / "d", tmp_path / "p.yaml", device_memory="cpu")
    cfg = load_config(result.config_path)
    fp = json.loads(result.fingerprint_path.read_text())
    images = tmp_path / "d" / "imagesTr"
    pooled = []
    for k in (0, 1):  # every foreground voxel (216 per case) is in the sample: exact percentiles
        fg = np.concatenate([np.asarray(nib.load(images / f"c{i}_000{k}.nii.gz").dataobj)[4:10, 4:10, 4:10].ravel()
                             for i in range(3)]).astype(np.float64)
        pooled.append(fg)
        assert fp["channels"][k]["intensity"]["p00_5"] == pytest.approx(np.percentile(fg, 0.5), abs=1e-3)
        assert fp["channels"][k]["intensity"]["p99_5"] == pytest.approx(np.percentile(fg, 99.5), abs=1e-3)
    assert [(c["name"], c["modality"]) for c in fp["channels"]] == [("CT", "CT"), ("PET", "MR")]
    assert [c["channels"] for c in fp["cases"]] == [2, 2, 2]
    assert cfg.data.channels is not None
    assert [(c.name, c.intensity) for c in cfg.data.channels] == [("CT", "ct_window"), ("PET", "zscore")]
    lo, hi = np.percentile(pooled[0], [0.5, 99.5])
    window = cfg.data.channels[0].windows[0]  # type: ignore[index]
    assert window.center_hu == pytest.approx((lo + hi) / 2, abs=0.06)  # type: ignore[union-attr]
    assert window.width_hu == pytest.approx(hi - lo, abs=0.06)  # type: ignore[union-attr]
    assert cfg.data.intensity == "ct_window"  # the first channel's, repeated
    text = result.config_path.read_text()
    assert "_0000 CT: CT (dataset.json channel_names says CT)" in text and "_0001 PET: z-score per case" in text
    assert "channels: CT (ct_window), PET (zscore)" in result.plan.summary()


def test_two_channel_set_without_dataset_json_names_channels_and_tests_hounsfield(tmp_path: Path) -> None:
    _two_channel_set(tmp_path / "d", None)
    cfg = load_config(plan_dataset(tmp_path / "d", tmp_path / "p.yaml", device_memory="cpu").config_path)
    assert [(c.name, c.intensity) for c in cfg.data.channels or []] == [("channel0", "ct_window"),
                                                                         ("channel1", "zscore")]
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    with pytest.raises(DataError, match=r"channel_names names channels \[0\], but the cases in .* have 2 channel"):
        plan_dataset(tmp_path / "d", tmp_path / "q.yaml", device_memory="cpu")
