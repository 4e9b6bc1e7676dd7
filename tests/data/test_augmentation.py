"""Batch augmentation: label values never interpolated, exact 90-degree turns, seeded draws."""

from __future__ import annotations

import pytest
import torch

from medseg.config import AugmentConfig
from medseg.data.augmentation import BatchAugment

OFF = {"flip": False, "rotate90": False, "rotate_degrees": 0.0, "scale": 0.0, "brightness": 0.0, "contrast": 0.0}


def _batch(b=4, size=(16, 16)):
    g = torch.Generator().manual_seed(1)
    image = torch.rand((b, 3, *size), generator=g)
    label = torch.randint(0, 3, (b, 1, *size), generator=g)
    return image, label


def test_everything_off_is_identity():
    image, label = _batch()
    out_i, out_l = BatchAugment(AugmentConfig(**OFF), spatial_dims=2)(image, label, torch.Generator())
    torch.testing.assert_close(out_i, image, rtol=0, atol=0)
    torch.testing.assert_close(out_l, label, rtol=0, atol=0)


def test_quarter_turns_are_exact_and_move_image_and_label_together():
    image, label = _batch()
    cfg = AugmentConfig(**{**OFF, "rotate90": True, "probability": 1.0})
    out_i, out_l = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(3))
    for k in range(image.shape[0]):
        turns = [i for i in range(4) if torch.equal(out_l[k], torch.rot90(label[k], i, dims=(1, 2)))]
        assert turns, f"sample {k} is not a 90-degree turn of its label"
        torch.testing.assert_close(out_i[k], torch.rot90(image[k], turns[0], dims=(1, 2)), rtol=0, atol=1e-5)


def test_flips_move_image_and_label_together():
    image, label = _batch()
    cfg = AugmentConfig(**{**OFF, "flip": True})
    out_i, out_l = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(5))
    for k in range(image.shape[0]):
        options = [(), (2,), (1,), (1, 2)]
        match = [d for d in options if torch.equal(out_l[k], label[k].flip(d) if d else label[k])
                 and torch.equal(out_i[k], image[k].flip(d) if d else image[k])]
        assert match


def test_rotation_and_zoom_keep_label_values():
    image, label = _batch(size=(24, 20))
    cfg = AugmentConfig(rotate_degrees=30, scale=0.2, probability=1.0)
    out_i, out_l = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(7))
    assert set(out_l.unique().tolist()) <= {0, 1, 2}
    assert out_l.dtype == label.dtype and out_i.shape == image.shape
    assert not torch.equal(out_l, label)


def test_same_seed_same_result_other_seed_differs():
    image, label = _batch()
    aug = BatchAugment(AugmentConfig(probability=1.0), spatial_dims=2)
    a = aug(image, label, torch.Generator().manual_seed(11))
    b = aug(image, label, torch.Generator().manual_seed(11))
    c = aug(image, label, torch.Generator().manual_seed(12))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert not torch.equal(a[0], c[0])


def test_intensity_changes_image_only():
    image, label = _batch()
    cfg = AugmentConfig(**{**OFF, "brightness": 0.2, "contrast": 0.2, "probability": 1.0})
    out_i, out_l = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out_l, label, rtol=0, atol=0)
    # per sample: out = image * factor + shift with factor in [0.8, 1.2] and shift in [-0.2, 0.2]
    for k in range(image.shape[0]):
        x, y = image[k].flatten(), out_i[k].flatten()
        factor = ((y - y.mean()) @ (x - x.mean())) / ((x - x.mean()) @ (x - x.mean()))
        assert 0.8 - 1e-4 <= float(factor) <= 1.2 + 1e-4


def test_3d_shapes():
    image = torch.rand(2, 1, 8, 10, 12)
    label = torch.randint(0, 2, (2, 1, 8, 10, 12))
    out_i, out_l = BatchAugment(AugmentConfig(probability=1.0), spatial_dims=3)(image, label, torch.Generator())
    assert out_i.shape == image.shape and out_l.shape == label.shape
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        BatchAugment(AugmentConfig(), spatial_dims=4)
