from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from medseg.data.label_discovery import discover_label_values
from medseg.data.label_transforms import InverseMapLabels, InverseMapLabelsd, MapLabels, MapLabelsd
from medseg.data.labels import LabelMap, mask_to_single_channel
from medseg.errors import DataError

POLYP = LabelMap.from_mapping({0: "background", 255: "polyp"})


@pytest.fixture(scope="module")
def kvasir_masks(shared_data):
    paths = sorted((shared_data / "kvasir-seg" / "masks").glob("*.jpg"))[:4]
    if not paths:
        pytest.skip(f"no Kvasir-SEG masks in {shared_data / 'kvasir-seg' / 'masks'}")
    return [(p.name, mask_to_single_channel(np.asarray(Image.open(p)), p.name)) for p in paths]


# ---------------------------------------------------------------- LabelMap construction


def test_several_values_map_to_one_class_first_is_written_back():
    # TotalSegmentator L1 = 31, VerSe L1 = 20.
    lm = LabelMap.from_mapping({0: "background", 31: "L1", 20: "L1", 32: "L2"})
    assert lm.names == ["background", "L1", "L2"]
    assert lm.num_classes == 3
    idx, snapped = lm.to_class(np.array([0, 20, 31, 32], dtype=np.uint8))
    np.testing.assert_array_equal(idx, [0, 1, 1, 2])
    assert snapped == 0
    np.testing.assert_array_equal(lm.to_values(idx), [0, 31, 31, 32])


def test_from_classes_equals_from_mapping():
    a = LabelMap.from_classes([("background", [0]), ("L1", [31, 20])])
    b = LabelMap.from_mapping({0: "background", 31: "L1", 20: "L1"})
    assert a == b


def test_dict_round_trip_is_json_safe():
    lm = LabelMap.from_classes([("background", [0]), ("L1", [31, 20]), ("L2", [32])])
    restored = LabelMap.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert restored == lm
    assert restored.to_dict() == {
        "classes": [
            {"name": "background", "values": [0]},
            {"name": "L1", "values": [31, 20]},
            {"name": "L2", "values": [32]},
        ],
        "unlisted": "error",
    }


def test_json_string_keys_accepted():
    assert LabelMap.from_mapping({"0": "background", "255": "polyp"}) == POLYP


@pytest.mark.parametrize(
    ("classes", "pattern"),
    [
        ([("a", [1]), ("b", [1])], r"gray value 1 is in both 'a' and 'b'"),
        ([("a", [1]), ("a", [2])], r"class name 'a' appears twice"),
        ([("a", [])], r"class 'a' has no gray values"),
        ([("a", [1.5])], r"must be integers, got 1.5"),
        ([("", [1])], r"non-empty strings, got ''"),
        ([], r"at least one class"),
    ],
)
def test_invalid_label_maps(classes, pattern):
    with pytest.raises(ValueError, match=pattern):
        LabelMap.from_classes(classes)


def test_from_dict_names_bad_entry():
    with pytest.raises(ValueError, match=r"classes\[1\] needs keys 'name' and 'values'"):
        LabelMap.from_dict({"classes": [{"name": "bg", "values": [0]}, {"name": "x"}]})


# ---------------------------------------------------------------- to_class / to_values


def test_swap_mapping():
    # value 2 -> class 1 and value 1 -> class 2: the transform must read the input, not its output.
    lm = LabelMap.from_classes([("bg", [0]), ("b", [2]), ("a", [1])])
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    out = MapLabels(lm)(labels)
    np.testing.assert_array_equal(out, [[0, 2, 1], [1, 2, 0]])
    np.testing.assert_array_equal(labels, [[0, 1, 2], [2, 1, 0]])  # input untouched
    np.testing.assert_array_equal(lm.to_values(out), labels)


def test_snapping_within_tolerance_logs_count(caplog):
    labels = np.array([0, 3, 255, 250, 8], dtype=np.uint8)
    with caplog.at_level(logging.DEBUG, logger="medseg.data.labels"):
        idx, snapped = POLYP.to_class(labels, tolerance=10, source="m.jpg")
    np.testing.assert_array_equal(idx, [0, 0, 1, 1, 0])
    assert idx.dtype == np.uint8
    assert snapped == 3
    assert "m.jpg: snapped 3 pixels" in caplog.text


def test_exact_values_required_without_tolerance():
    with pytest.raises(DataError, match=r"case7\.png: label values 3 are not within tolerance 0.*\[0, 255\]"):
        POLYP.to_class(np.array([0, 3, 255], dtype=np.uint8), source="case7.png")


def test_out_of_tolerance_names_file_value_and_allowed_values():
    with pytest.raises(DataError, match=r"mask\.jpg: label values 128 .*tolerance 10.*\[0, 255\]"):
        POLYP.to_class(np.array([0, 128, 255], dtype=np.uint8), tolerance=10, source="mask.jpg")


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.float32, np.float64])
def test_dtypes(dtype):
    lm = LabelMap.from_mapping({-1: "ignore", 0: "bg", 1000: "bone"}) if dtype != np.uint16 else POLYP
    values = lm.output_values
    labels = np.array(values * 2, dtype=dtype)
    idx, _ = lm.to_class(labels)
    np.testing.assert_array_equal(idx, list(range(len(values))) * 2)
    np.testing.assert_array_equal(lm.to_values(idx), labels.astype(np.int64))


def test_float_noise_snaps_and_nan_raises():
    idx, snapped = POLYP.to_class(np.array([0.2, 254.7]), tolerance=0.5)
    np.testing.assert_array_equal(idx, [0, 1])
    assert snapped == 2
    with pytest.raises(DataError, match="nan"):
        POLYP.to_class(np.array([0.0, np.nan]), tolerance=0.5)


def test_tensor_and_metatensor_filename():
    labels = MetaTensor(torch.tensor([[0, 255, 7]], dtype=torch.uint8), meta={"filename_or_obj": "/d/c1.png"})
    out, snapped = POLYP.to_class(labels, tolerance=10)
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.int64
    assert out.meta["filename_or_obj"] == "/d/c1.png"
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[0, 1, 0]]), rtol=0, atol=0)
    assert snapped == 1
    with pytest.raises(DataError, match=r"/d/c1\.png: label values 7"):
        POLYP.to_class(labels)


def test_to_values_smallest_dtype_and_range_check():
    assert POLYP.to_values(np.array([0, 1])).dtype == np.uint8
    assert LabelMap.from_mapping({0: "a", 300: "b"}).to_values(np.array([1])).dtype == np.uint16
    assert LabelMap.from_mapping({-1: "a", 2: "b"}).to_values(np.array([0])).dtype == np.int8
    wide = LabelMap.from_mapping({0: "a", 300: "b"}).to_values(torch.tensor([1]))
    torch.testing.assert_close(wide, torch.tensor([300], dtype=torch.int32), rtol=0, atol=0)
    out = POLYP.to_values(torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([0, 255], dtype=torch.uint8), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"class index 2 outside 0\.\.1"):
        POLYP.to_values(np.array([0, 2]))


@settings(max_examples=60, deadline=None)
@given(
    palette=st.lists(st.integers(0, 65535), min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_round_trip_property(palette, data):
    lm = LabelMap.from_classes([(f"c{i}", [v]) for i, v in enumerate(palette)])
    picks = data.draw(st.lists(st.sampled_from(palette), min_size=1, max_size=50))
    labels = np.array(picks, dtype=np.uint16 if max(palette) > 255 else np.uint8)
    idx, snapped = lm.to_class(labels)
    assert snapped == 0
    np.testing.assert_array_equal(lm.to_values(idx), labels)
    np.testing.assert_array_equal(lm.to_class(lm.to_values(idx))[0], idx)


# ---------------------------------------------------------------- transforms


def test_dict_transforms_in_compose_round_trip():
    lm = LabelMap.from_mapping({0: "bg", 31: "L1", 20: "L1"})
    data = {"label": np.array([[0, 20, 31, 30]], dtype=np.uint8)}
    mapped = Compose([MapLabelsd("label", lm, tolerance=1)])(data)
    np.testing.assert_array_equal(mapped["label"], [[0, 1, 1, 1]])
    back = Compose([InverseMapLabelsd("label", lm)])(mapped)
    np.testing.assert_array_equal(back["label"], [[0, 31, 31, 31]])
    np.testing.assert_array_equal(InverseMapLabels(lm)(np.array([1])), [31])


def test_transform_reprs_and_argument_checks():
    assert repr(MapLabels(POLYP, tolerance=10)) == (
        "MapLabels(label_map={background: [0], polyp: [255]}, tolerance=10)"
    )
    assert repr(MapLabelsd("label", POLYP)).startswith("MapLabelsd(keys=['label'], label_map=")
    assert "InverseMapLabels(label_map={background: [0]" in repr(InverseMapLabels(POLYP))
    with pytest.raises(ValueError, match="tolerance must be >= 0, got -1"):
        MapLabels(POLYP, tolerance=-1)
    with pytest.raises(TypeError, match="must be a LabelMap, got dict"):
        MapLabels({0: "bg"})


# ---------------------------------------------------------------- discovery


def test_discover_exact_values_from_stream():
    masks = (np.full((4, 4), v, dtype=np.uint8) for v in (0, 1, 0, 5))
    found = discover_label_values(masks)
    assert found.values == (0, 1, 5)
    assert found.counts == {0: 32, 1: 16, 5: 16}
    assert found.num_arrays == 4
    assert found.num_snapped == 0


def test_discover_prefers_round_values_over_slightly_more_frequent():
    counts = {250: 100, 253: 90, 255: 80, 3: 1000, 4: 10}
    arr = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in counts.items()])
    found = discover_label_values(arr, tolerance=10)
    assert found.values == (
        3,
        255,
    )  # 0 absent -> mode 3; 255 has >= half of 250's count and is round
    assert "palette [3, 255]" in found.summary()


def test_discover_rejects_fractional_floats_and_warns_on_gradients(caplog):
    with pytest.raises(DataError, match=r"array #2: label values must be whole numbers"):
        discover_label_values([np.zeros(3), np.array([0.5])])
    with caplog.at_level(logging.WARNING, logger="medseg.data.label_discovery"):
        found = discover_label_values(np.arange(256, dtype=np.uint8), tolerance=2)
    assert len(found.values) == 1
    assert "0..255 chain into one cluster" in caplog.text


# ---------------------------------------------------------------- RGB masks


def test_mask_to_single_channel_shapes():
    gray = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(mask_to_single_channel(gray, "a.png"), gray)
    np.testing.assert_array_equal(mask_to_single_channel(gray[..., None], "a.png"), gray)
    noisy = np.stack([gray, gray, np.array([[2, 253]], dtype=np.uint8)], axis=-1)
    np.testing.assert_array_equal(mask_to_single_channel(noisy, "a.png"), [[1, 254]])


def test_color_coded_mask_rejected():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"seg_07\.png: .*differ by up to 255.*color-coded"):
        mask_to_single_channel(rgb, "seg_07.png")
    with pytest.raises(DataError, match=r"seg_07\.png: mask shape \(2, 2, 4\)"):
        mask_to_single_channel(np.zeros((2, 2, 4), dtype=np.uint8), "seg_07.png")


# ---------------------------------------------------------------- real Kvasir-SEG JPEG masks


def test_kvasir_discovery_gives_0_and_255(kvasir_masks):
    found = discover_label_values((mask for _, mask in kvasir_masks), tolerance=20)
    assert found.values == (0, 255)
    assert len(found.counts) > 2  # JPEG noise really is there


def test_kvasir_all_pixels_snap(kvasir_masks):
    total = 0
    for name, mask in kvasir_masks:
        idx, snapped = POLYP.to_class(mask, tolerance=20, source=name)
        noisy = int(np.count_nonzero((mask != 0) & (mask != 255)))
        assert snapped == noisy
        np.testing.assert_array_equal(idx, (mask >= 128).astype(np.uint8))
        total += snapped
    assert total > 0


def test_kvasir_mid_gray_value_raises(kvasir_masks):
    name, mask = kvasir_masks[0]
    corrupted = mask.copy()
    corrupted[0, 0] = 128
    with pytest.raises(DataError, match=rf"{name}: label values 128 .*tolerance 10"):
        POLYP.to_class(corrupted, tolerance=10, source=name)


def test_unlisted_values_to_background_when_asked():
    # a TotalSegmentator-like map: 5 liver, 31 L1, 30 L2; only vertebrae are classes
    labels = np.array([0, 5, 31, 30, 5, 117], dtype=np.uint8)
    strict = LabelMap.from_classes([("background", [0]), ("L1", [31, 20]), ("L2", [30, 21])])
    with pytest.raises(DataError, match=r"label values 5, 117 are not within tolerance 0"):
        strict.to_class(labels, source="seg.nii.gz")
    lenient = LabelMap.from_classes([("background", [0]), ("L1", [31, 20]), ("L2", [30, 21])], unlisted="background")
    idx, snapped = lenient.to_class(labels)
    np.testing.assert_array_equal(idx, [0, 0, 1, 2, 0, 0])
    assert snapped == 0
    assert LabelMap.from_dict(lenient.to_dict()) == lenient
    with pytest.raises(ValueError, match="unlisted must be 'error' or 'background'"):
        LabelMap.from_classes([("bg", [0]), ("a", [1])], unlisted="ignore")
