"""The ``data.augment`` section: training-time augmentation."""

from __future__ import annotations

from pydantic import Field

from medseg.config.strict import Strict

__all__ = ["AugmentConfig"]


class AugmentConfig(Strict):
    """Training-time augmentation (applied to training samples only)."""

    flip: bool = Field(True, description="Random flips along each spatial axis (p=0.5 each).")
    rotate90: bool = Field(False, description="Random 90-degree rotations in the first two axes.")
    rotate_degrees: float = Field(15.0, ge=0, le=180, description="Random rotation range (+/- degrees).")
    scale: float = Field(0.1, ge=0, lt=1, description="Random zoom range (+/- fraction).")
    brightness: float = Field(0.1, ge=0, le=1, description="Random intensity shift (+/- fraction of range).")
    contrast: float = Field(0.1, ge=0, le=1, description="Random contrast factor range (+/- fraction).")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise std added to the normalised input.")
    probability: float = Field(0.5, ge=0, le=1, description="Probability of each random spatial/intensity op.")
    elastic_probability: float = Field(
        0.0, ge=0, le=1, description="Probability of an elastic deformation per sample (0: off); 2D and 3D.")
    elastic_magnitude: float = Field(
        4.0, ge=0, description="Elastic: largest displacement of a control point, in pixels (voxels).")
    elastic_spacing: float = Field(
        16.0, ge=2, description="Elastic: distance between control points in pixels (voxels); larger is smoother.")
    crop_probability: float = Field(
        0.0, ge=0, le=1, description="Probability of a random crop per sample (0: off), resized back to the input "
        "size; 2D images only (volume patches are random crops already).")
    crop_min_fraction: float = Field(
        0.7, gt=0, le=1, description="Random crop: each side keeps a fraction drawn in [crop_min_fraction, 1].")
    blur_probability: float = Field(
        0.0, ge=0, le=1, description="Probability of a Gaussian blur per sample (0: off).")
    blur_sigma: float = Field(
        1.0, gt=0, le=8, description="Gaussian blur: sigma drawn in [0, blur_sigma] pixels (voxels), all axes.")
    gamma_probability: float = Field(
        0.0, ge=0, le=1, description="Probability of a gamma change per sample (0: off): each channel rescaled to "
        "0..1 by its min and max, raised to gamma, rescaled back.")
    gamma: float = Field(0.3, ge=0, lt=1, description="Gamma drawn in [1 - gamma, 1 + gamma].")
    saturation: float = Field(
        0.0, ge=0, le=1, description="RGB images: colour saturation scaled by a factor drawn in [1 - saturation, "
        "1 + saturation] (each pixel's distance from its gray, the mean of its channels), with data.augment."
        "probability (0: off).")
    hue: float = Field(
        0.0, ge=0, le=0.5, description="RGB images: hue turned by an angle drawn in [-hue, hue] turns (0.5: half a "
        "turn) about the gray axis, which keeps each pixel's gray and colour strength, with data.augment.probability "
        "(0: off).")

