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


# ------------------------------------------------------------------ elastic, crop, blur, gamma (each with its p)
NEW_OPS = {
    "elastic": {"elastic_probability": 1.0, "elastic_magnitude": 3.0, "elastic_spacing": 6.0},
    "crop": {"crop_probability": 1.0, "crop_min_fraction": 0.6},
    "blur": {"blur_probability": 1.0, "blur_sigma": 1.5},
    "gamma": {"gamma_probability": 1.0, "gamma": 0.5},
}


def _blobs(b=3, size=(24, 20), dims=2):
    """Labels 0..2 as blocks and an image that is the label plus a little texture (so alignment can be read off)."""
    shape = size if dims == 2 else (*size, 12)
    label = torch.zeros((b, 1, *shape), dtype=torch.long)
    label[:, :, 4:12, 3:9] = 1
    label[:, :, 14:20, 10:17] = 2
    g = torch.Generator().manual_seed(0)
    image = torch.cat([label.float(), label.float() + 0.1 * torch.rand((b, 1, *shape), generator=g)], dim=1)
    return image, label


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(NEW_OPS))
def test_new_ops_with_p0_are_identity_and_with_p1_change_the_image_only_as_allowed(name, dims):
    if name == "crop" and dims == 3:
        pytest.skip("random crops are 2D only (volume patches are random crops already)")
    image, label = _blobs(dims=dims)
    off = {k: (0.0 if k.endswith("probability") else v) for k, v in NEW_OPS[name].items()}
    out_i, out_l = BatchAugment(AugmentConfig(**OFF, **off), spatial_dims=dims)(image, label,
                                                                                torch.Generator().manual_seed(4))
    torch.testing.assert_close(out_i, image, rtol=0, atol=0)
    torch.testing.assert_close(out_l, label, rtol=0, atol=0)
    aug = BatchAugment(AugmentConfig(**OFF, **NEW_OPS[name]), spatial_dims=dims)
    out_i, out_l = aug(image, label, torch.Generator().manual_seed(4))
    assert not torch.equal(out_i, image)
    assert out_l.dtype == label.dtype and set(out_l.unique().tolist()) <= {0, 1, 2}
    if name in ("blur", "gamma"):
        torch.testing.assert_close(out_l, label, rtol=0, atol=0)  # intensity ops leave labels alone
    else:
        assert not torch.equal(out_l, label)
        # aligned: the image's first channel (the label's values, resampled bilinearly) agrees with the label,
        # resampled nearest, away from the blurred class edges
        agree = (out_i[:, 0].round().long() == out_l[:, 0]).float().mean()
        assert float(agree) > 0.95
    again = aug(image, label, torch.Generator().manual_seed(4))
    torch.testing.assert_close(again[0], out_i, rtol=0, atol=0)
    other = aug(image, label, torch.Generator().manual_seed(5))
    assert not torch.equal(other[0], out_i)


def test_elastic_and_crop_keep_a_constant_image_and_its_mask_constant():
    image, label = torch.full((2, 1, 16, 16), 0.7), torch.ones((2, 1, 16, 16), dtype=torch.long)
    cfg = AugmentConfig(**OFF, **NEW_OPS["elastic"], **NEW_OPS["crop"])
    out_i, out_l = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out_i, image, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_l, label, rtol=0, atol=0)


def test_blur_matches_a_hand_made_gaussian_and_gamma_the_formula():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    label = torch.zeros(1, 1, 9, 9, dtype=torch.long)
    cfg = AugmentConfig(**OFF, blur_probability=1.0, blur_sigma=1.0)
    gen = torch.Generator().manual_seed(2)
    out, _ = BatchAugment(cfg, spatial_dims=2)(image, label, gen)
    # the op drew (apply, sigma) from the same generator: redraw them to know sigma
    draws = torch.rand(2, generator=torch.Generator().manual_seed(2))
    sigma = float(draws[1]) * 1.0
    x = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    torch.testing.assert_close(out[0, 0, 1:8, 1:8], k[:, None] * k[None, :], rtol=0, atol=1e-6)
    ramp = torch.linspace(2.0, 6.0, 5).view(1, 1, 1, 5)
    cfg = AugmentConfig(**OFF, gamma_probability=1.0, gamma=0.5)
    out, _ = BatchAugment(cfg, spatial_dims=2)(ramp, torch.zeros(1, 1, 1, 5, dtype=torch.long),
                                               torch.Generator().manual_seed(3))
    draws = torch.rand(2, generator=torch.Generator().manual_seed(3))
    gamma = 1 + (float(draws[1]) * 2 - 1) * 0.5
    expected = torch.linspace(0, 1, 5) ** gamma * 4 + 2
    torch.testing.assert_close(out.flatten(), expected, rtol=0, atol=1e-5)


def test_volume_samples_get_the_same_ops_per_sample_and_repeatably():
    from medseg.data.augmentation import SampleAugmentd, build_train_transforms

    image, label = _blobs(b=1, dims=3)
    cfg = AugmentConfig(**OFF, **NEW_OPS["elastic"], **NEW_OPS["gamma"])
    op = SampleAugmentd(cfg, spatial_dims=3)
    first = op.set_random_state(seed=7)({"image": image[0], "label": label[0]})
    second = op.set_random_state(seed=7)({"image": image[0], "label": label[0]})
    torch.testing.assert_close(first["image"], second["image"], rtol=0, atol=0)
    assert not torch.equal(first["image"], image[0]) and set(first["label"].unique().tolist()) <= {0, 1, 2}
    assert any(isinstance(t, SampleAugmentd) for t in build_train_transforms(cfg, spatial_dims=3).transforms)
    assert not any(isinstance(t, SampleAugmentd) for t in build_train_transforms(AugmentConfig(), spatial_dims=3)
                   .transforms)


def test_random_crops_are_for_2d_images_only():
    from medseg.config.loading import validate_config
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.augment\.crop_probability: random crops are for images2d"):
        validate_config({"data": {"kind": "volumes3d", "root": "x", "augment": {"crop_probability": 0.5}},
                         "model": {"spatial_dims": 3}})


def test_saturation_and_hue_match_the_formulas_and_keep_gray_and_labels():
    from scipy.spatial.transform import Rotation

    image, label = _batch(b=3)
    image[:, :, 0, 0] = 0.4  # a gray pixel: no colour to change
    cfg = AugmentConfig(**OFF, probability=1.0, saturation=0.5, hue=0.25)
    out, out_label = BatchAugment(cfg, spatial_dims=2)(image, label, torch.Generator().manual_seed(6))
    torch.testing.assert_close(out_label, label, rtol=0, atol=0)
    draws = torch.rand(4, 3, generator=torch.Generator().manual_seed(6))  # (apply, factor), (apply, angle)
    factor = 1 + (draws[1] * 2 - 1) * 0.5
    angle = (draws[3] * 2 - 1) * 0.25 * 2 * torch.pi
    gray = image.mean(1, keepdim=True)
    saturated = gray + (image - gray) * factor.view(3, 1, 1, 1)
    axis = torch.ones(3, dtype=torch.float64) / 3**0.5
    for i in range(3):  # the turn, from SciPy's rotation of a rotation vector
        turn = torch.from_numpy(Rotation.from_rotvec((angle[i].double() * axis).numpy()).as_matrix()).float()
        expected = torch.einsum("ij,jhw->ihw", turn, saturated[i])
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.mean(1), image.mean(1), rtol=0, atol=1e-5)  # every pixel keeps its gray
    torch.testing.assert_close(out[:, :, 0, 0], image[:, :, 0, 0], rtol=0, atol=1e-6)


def test_colour_changes_are_for_rgb_images_only():
    from medseg.config.loading import validate_config
    from medseg.errors import ConfigError

    for data, found in (({"kind": "images2d", "color": "gray"}, "data.color gray"),
                        ({"kind": "volumes3d"}, "data.kind volumes3d")):
        with pytest.raises(ConfigError, match=rf"data\.augment.*: saturation and hue: colour changes are for RGB "
                           rf".*; got {found}$"):
            validate_config({"data": {**data, "root": "x", "augment": {"hue": 0.1, "saturation": 0.2}},
                             "model": {"spatial_dims": 3 if data["kind"] == "volumes3d" else 2}})
    with pytest.raises(ValueError, match="saturation and hue need RGB images .*got 1 channels"):
        BatchAugment(AugmentConfig(saturation=0.2), spatial_dims=2)(
            torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long), torch.Generator().manual_seed(0))
