from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medseg.data.transforms import WINDOW_PRESETS, CTWindow, CTWindowd, ct_window, resolve_window

HU = [-1000.0, -160.0, 40.0, 240.0, 3000.0]


def test_ct_window_maps_window_edges_to_0_and_1():
    out = CTWindow(center_hu=40, width_hu=400)(torch.tensor([HU]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]), rtol=0, atol=1e-6)


def test_ct_window_numpy_and_integer_input():
    out = ct_window(np.array([HU], dtype=np.int16), center_hu=40, width_hu=400)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], rtol=0, atol=1e-6)


def test_ct_window_integer_tensor_becomes_float():
    out = ct_window(torch.tensor([[-160, 40, 240]], dtype=torch.int16), center_hu=40, width_hu=400)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 1.0]]), rtol=0, atol=1e-6)


def test_two_windows_stack_as_channels():
    # bone: 400 +- 900 -> [-500, 1300]; soft_tissue: 40 +- 200 -> [-160, 240].
    image = torch.tensor([[[-500.0, 400.0, 1300.0, 40.0]]])  # (1, 1, 4)
    out = CTWindow(["bone", "soft_tissue"])(image)
    expected = torch.tensor(
        [
            [[0.0, 0.5, 1.0, 540 / 1800]],
            [[0.0, 1.0, 1.0, 0.5]],
        ]
    )
    assert out.shape == (2, 1, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_multi_window_numpy():
    out = CTWindow([(40, 400), {"center_hu": 400, "width_hu": 1800}])(np.array([[40.0]]))
    np.testing.assert_allclose(out, [[0.5], [540 / 1800]], rtol=0, atol=1e-6)


def test_single_window_keeps_channels():
    image = torch.full((3, 2, 2), 40.0)
    out = CTWindow("soft_tissue")(image)
    assert out.shape == (3, 2, 2)
    torch.testing.assert_close(out, torch.full((3, 2, 2), 0.5), rtol=0, atol=1e-6)


def test_multi_window_needs_one_channel():
    with pytest.raises(ValueError, match=r"2 windows need a one-channel input.*\(3, 2\)"):
        CTWindow(["bone", "lung"])(torch.zeros(3, 2))


def test_metatensor_stays_metatensor():
    image = MetaTensor(torch.tensor([[40.0, 240.0]]), meta={"filename_or_obj": "ct.nii.gz"})
    for transform in (CTWindow("soft_tissue"), CTWindow(["soft_tissue", "bone"])):
        out = transform(image)
        assert isinstance(out, MetaTensor)
        assert out.meta["filename_or_obj"] == "ct.nii.gz"


def test_dict_version_in_compose():
    pipeline = Compose([CTWindowd("image", ["soft_tissue", "lung"])])
    data = {"image": torch.tensor([[40.0]]), "label": torch.tensor([[1]])}
    out = pipeline(data)
    # lung: -600 +- 750 -> [-1350, 150]; 40 HU -> 1390 / 1500.
    torch.testing.assert_close(out["image"], torch.tensor([[0.5], [1390 / 1500]]), rtol=0, atol=1e-6)
    assert out["label"] is data["label"]
    assert data["image"].shape == (1, 1)  # input dict untouched


def test_dict_version_missing_key():
    with pytest.raises(KeyError, match="image"):
        CTWindowd("image", "bone")({"label": torch.zeros(1)})
    assert CTWindowd("image", "bone", allow_missing_keys=True)({"label": 1}) == {"label": 1}


def test_repr_shows_parameters():
    assert repr(CTWindow(center_hu=40, width_hu=400)) == "CTWindow(center_hu=40, width_hu=400)"
    assert repr(CTWindow(["bone", "lung"])) == "CTWindow(windows=[(400, 1800), (-600, 1500)])"
    assert repr(CTWindowd("image", "bone")) == "CTWindowd(keys=['image'], center_hu=400, width_hu=1800)"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("soft_tissue", (40, 400)),
        ("bone", (400, 1800)),
        ("lung", (-600, 1500)),
        ("brain", (40, 80)),
    ],
)
def test_presets(name, expected):
    assert resolve_window(name) == expected


def test_spine_preset_is_between_soft_tissue_and_bone():
    center, width = WINDOW_PRESETS["spine"]
    low, high = center - width / 2, center + width / 2
    assert low < -100 and high > 700  # fat/muscle to cortical bone
    assert width < WINDOW_PRESETS["bone"][1]


def test_resolve_window_forms():
    assert resolve_window({"center_hu": 50, "width_hu": 350}) == (50.0, 350.0)
    assert resolve_window((-600, 1500)) == (-600.0, 1500.0)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match=r"unknown preset 'bones'.*'bone'.*'soft_tissue'"):
        resolve_window("bones")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"center_hu": 40}, r"center_hu.*width_hu.*\['center_hu'\]"),
        ((40, 0), r"width_hu must be a finite number > 0, got 0"),
        ((float("nan"), 400), r"center_hu must be a finite number, got nan"),
    ],
)
def test_bad_window_values(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_window(spec)


def test_bad_window_type():
    with pytest.raises(TypeError, match=r"\(40, 400, 1\)"):
        resolve_window((40, 400, 1))


def test_ctwindow_checks_arguments_at_construction():
    with pytest.raises(ValueError, match="not both or neither"):
        CTWindow("bone", center_hu=40, width_hu=400)
    with pytest.raises(ValueError, match="not both or neither"):
        CTWindow()
    with pytest.raises(ValueError, match=r"width_hu=None"):
        CTWindow(center_hu=40)
    with pytest.raises(ValueError, match=r"width_hu must be a finite number > 0, got -1"):
        CTWindow(center_hu=40, width_hu=-1)
    with pytest.raises(ValueError, match=r"non-empty list, got \[\]"):
        CTWindow([])
