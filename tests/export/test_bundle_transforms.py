"""The bundled MONAI transforms reproduce medseg's resampling and tile padding (an independent implementation each:
scipy's Gaussian and medseg's VolumePreprocessor, medseg's tile planner), and Invertd undoes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from nibabel.orientations import apply_orientation
from scipy import ndimage

from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.export.bundle_transforms import PadForNetworkd, ResampleToSpacingd, gaussian_smooth, network_padding
from medseg.io.volume_io import read_volume
from medseg.sliding_window.plan import plan_auto


@pytest.mark.parametrize("sigma", [[0.5, 0.0, 1.7], [2.3, 1.0, 0.0]])
def test_gaussian_equals_scipy_nearest(sigma):
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 9, 14, 11)).astype(np.float32))
    expected = ndimage.gaussian_filter(image[0].numpy(), sigma=sigma, mode="nearest")
    torch.testing.assert_close(gaussian_smooth(image, sigma)[0], torch.from_numpy(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("sub", "name", "spacing"), [
    ("spine-ct-verse-cutout", "sub-ct_label-22_ct.nii.gz", (3.0, 2.5, 4.0)),  # 1.5 mm -> shrinking, smoothed
    ("spine-ct-totalseg", "example_ct.nii.gz", (2.0, 2.0, 2.0)),  # 3 mm -> growing, no smoothing
])
def test_resample_equals_medseg_preprocessing(shared_data, sub, name, spacing):
    path = shared_data / sub / name
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    Orientationd("image", axcodes="RAS", labels=None)])
    loaded = load({"image": str(path)})
    out = ResampleToSpacingd("image", spacing)(loaded)["image"]
    pre = VolumePreprocessor({"intensity": "zscore", "spacing_mm": list(spacing), "orientation": "RAS"})
    volume = read_volume(path)
    grid = pre.plan(volume)
    oriented = np.ascontiguousarray(apply_orientation(volume.array.astype(np.float32), grid.transform))
    sigma = [max(0.0, (a / b - 1) / 2) for a, b in zip(grid.oriented_shape, grid.shape_out, strict=True)]
    if max(sigma) > 0:
        oriented = ndimage.gaussian_filter(oriented, sigma=sigma, mode="nearest")
    expected = F.interpolate(torch.from_numpy(oriented)[None, None], size=grid.shape_out, mode="trilinear",
                             align_corners=False)[0]
    assert tuple(out.shape[1:]) == grid.shape_out
    torch.testing.assert_close(out.as_tensor(), expected, rtol=0, atol=1e-3)  # HU
    np.testing.assert_allclose(out.affine.numpy(), grid.affine_out, atol=1e-6)
    back = ResampleToSpacingd("image", spacing)
    forward = back({"image": loaded["image"]})
    assert tuple(back.inverse(forward)["image"].shape) == tuple(loaded["image"].shape)


@pytest.mark.parametrize("shape", [(21, 16, 5), (40, 33, 64), (7, 7, 7), (100, 18, 3)])
def test_padding_is_medseg_tile_padding(shape):
    plan = plan_auto(shape, (16, 16, 16), (4, 4, 4), 0.25, tile_bytes_per_voxel=1.0, row_bytes_per_voxel=0.0,
                     budget_bytes=1e12)
    pads = network_padding(shape, (4, 4, 4), (16, 16, 16))
    assert [b for b, _ in pads] == list(plan.pad)
    assert [n + b + a for n, (b, a) in zip(shape, pads, strict=True)] == list(plan.padded)


def test_pad_for_network_inverts():
    image = MetaTensor(torch.arange(2 * 5 * 6 * 3, dtype=torch.float32).reshape(2, 5, 6, 3))
    pad = PadForNetworkd("image", divisor=(4, 1, 4), min_size=(16, 1, 8))
    out = pad({"image": image})["image"]
    # axis 0: 5 -> 16, (16 - 5) // 2 = 5 before, rounded down to the divisor: 4; axis 2: 3 -> 8, 2 -> 0 before
    assert tuple(out.shape) == (2, 16, 6, 8)
    torch.testing.assert_close(out[:, 4:9, :, :3].as_tensor(), image.as_tensor(), rtol=0, atol=0)
    assert float(out.as_tensor().abs().sum()) == float(image.as_tensor().abs().sum())  # zeros elsewhere
    torch.testing.assert_close(pad.inverse({"image": out})["image"].as_tensor(), image.as_tensor(), rtol=0, atol=0)
