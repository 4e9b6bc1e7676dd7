"""Training augmentation: whole batches on the device (:class:`BatchAugment`, 2D images) and MONAI
per-sample pipelines (:func:`build_train_transforms`, volume patches).

Batch augmentation, one call per step:

Per-sample transforms cost a Python round trip and a grid resample per image; on a 2-core machine that
is 10-20 % of a 2D training step. Here one ``affine_grid`` + ``grid_sample`` moves a whole batch, flips
and intensity changes are tensor ops, and every random draw comes from ``torch.Generator`` s seeded by
the caller. Training gives one generator per sample, seeded by ``(train.seed, epoch, sample index)``, so a
sample is augmented the same way whatever batch, data-loader worker or training process it lands in, and a
resumed run repeats an uninterrupted one exactly.

Beyond flips, turns, rotation, zoom, contrast, brightness and noise, each with its own probability (0: off):

- elastic deformation (2D and 3D): random displacements of control points ``elastic_spacing`` pixels apart,
  at most ``elastic_magnitude`` pixels, interpolated smoothly (bicubic in 2D, trilinear in 3D);
- random crop (2D images): each side keeps a fraction in ``[crop_min_fraction, 1]`` at a random place, resized
  back to the input size;
- Gaussian blur with sigma drawn in ``[0, blur_sigma]`` (all axes; edges replicated);
- gamma drawn in ``[1 - gamma, 1 + gamma]`` on each channel rescaled to 0..1 by its min and max;
- RGB colour: saturation scaled by a factor in ``[1 - saturation, 1 + saturation]`` and hue turned by up to
  ``hue`` turns about the gray axis (Rodrigues' rotation), both keeping each pixel's gray (its channel mean).

Crop, rotation, zoom and elastic displacement are composed into one sampling grid, so a sample is resampled
once (image bilinear, label nearest-neighbour: class values are never mixed). Outside the image the padding is
zeros when a rotation or zoom applies (as before), else the edge values, so a constant image and its constant
mask stay constant under crops and elastic deformation. The new ops draw their random numbers after the older
ones, so a config that leaves them off trains exactly as before. Volume patches get the elastic, blur and gamma
ops per sample through :class:`SampleAugmentd`, which runs this same code on a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from medseg.config.schema import AugmentConfig


class BatchAugment:
    """Random flips, 90-degree turns, rotation + zoom, contrast, brightness and noise for a batch.

    Args:
        cfg: The ``data.augment`` section (probabilities and ranges).
        spatial_dims: 2 or 3.

    Call with ``image`` (B, C, *spatial) float, ``label`` (B, 1, *spatial) integer and a generator, or a
    sequence of B generators (sample ``i`` then draws only from the ``i``-th, so its augmentation does not
    depend on the rest of the batch); returns both augmented (label values are never interpolated:
    nearest-neighbour resampling).

    Example:
        >>> aug = BatchAugment(AugmentConfig(probability=1.0), spatial_dims=2)
        >>> img, lab = aug(torch.rand(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long),
        ...                torch.Generator().manual_seed(0))
        >>> tuple(img.shape), lab.dtype
        ((2, 3, 8, 8), torch.int64)
    """

    def __init__(self, cfg: AugmentConfig, *, spatial_dims: int) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.cfg = cfg
        self.dims = spatial_dims

    def __repr__(self) -> str:
        return f"BatchAugment({self.cfg!r}, spatial_dims={self.dims})"

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, b = self.cfg, image.shape[0]
        single = generator if isinstance(generator, torch.Generator) else None
        gens = [] if isinstance(generator, torch.Generator) else list(generator)
        if single is None and len(gens) != b:
            raise ValueError(f"got {len(gens)} generators for a batch of {b}")

        def draw(*shape: int) -> torch.Tensor:
            if single is None:  # shape[0] is the batch: each sample's values from its own generator
                return torch.stack([torch.rand(shape[1:], generator=g) for g in gens]).to(image.device)
            return torch.rand(shape, generator=single).to(image.device)

        if cfg.flip:
            for axis in range(self.dims):
                flip = (draw(b) < 0.5).view(b, *([1] * (image.ndim - 1)))
                image = torch.where(flip, image.flip(2 + axis), image)
                label = torch.where(flip, label.flip(2 + axis), label)
        theta = self._affine(b, draw)
        crop = self._crop(b, draw) if cfg.crop_probability > 0 and self.dims == 2 else None
        shift = self._elastic(image, b, draw) if cfg.elastic_probability > 0 and cfg.elastic_magnitude > 0 else None
        if theta is not None and crop is None and shift is None:  # the older path, unchanged
            grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
            image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False).round().to(label.dtype)
        elif crop is not None or shift is not None:
            image, label = self._resample(image, label, theta, crop, shift)
        image = self._intensity(image, b, draw, generator)
        if cfg.blur_probability > 0:
            image = self._blur(image, b, draw)
        if cfg.gamma_probability > 0 and cfg.gamma > 0:
            image = self._gamma(image, b, draw)
        if cfg.saturation > 0 or cfg.hue > 0:
            image = self._colour(image, b, draw)
        return image, label

    def _resample(self, image: torch.Tensor, label: torch.Tensor, theta: torch.Tensor | None,
                  crop: tuple[torch.Tensor, torch.Tensor] | None,
                  shift: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One resampling for rotation/zoom, crop and elastic displacement; samples none of them moved stay as
        they are, bit for bit."""
        b, d = image.shape[0], self.dims
        moved = torch.zeros(b, dtype=torch.bool, device=image.device)
        if theta is None:
            theta = torch.zeros(b, d, d + 1, device=image.device)
            theta[:, :, :d] = torch.eye(d, device=image.device)
            padding = "border"
        else:
            theta = theta.to(image.device)
            moved |= True
            padding = "zeros"
        if crop is not None:  # output -> crop box (C p + c) -> input (A (C p + c) + a)
            box, applied = crop
            box = box.to(theta)
            linear = theta[:, :, :d] @ box[:, :, :d]
            offset = theta[:, :, :d] @ box[:, :, d:] + theta[:, :, d:]
            theta = torch.cat([linear, offset], dim=2)
            moved |= applied.to(image.device)
        grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
        if shift is not None:
            grid = grid + shift[0].to(grid)
            moved |= shift[1].to(image.device)
        warped = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=False)
        warped_label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode=padding,
                                     align_corners=False).round().to(label.dtype)
        keep = moved.view(b, *([1] * (image.ndim - 1)))
        return torch.where(keep, warped, image), torch.where(keep, warped_label, label)

    def _crop(self, b: int, draw: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Affine maps (B, d, d + 1) of a random box per sample (identity where not drawn), and which were."""
        cfg, d = self.cfg, self.dims
        applied = draw(b) < cfg.crop_probability
        fraction = 1 - draw(b, d) * (1 - cfg.crop_min_fraction) * applied.float()[:, None]
        centre = (draw(b, d) * 2 - 1) * (1 - fraction)
        box = torch.zeros(b, d, d + 1, device=fraction.device)
        box[:, :, :d] = torch.diag_embed(fraction)
        box[:, :, d] = centre
        return box, applied

    def _elastic(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Displacements (B, *spatial, d) in grid units (zero where not drawn), and which samples got one."""
        cfg, d = self.cfg, self.dims
        spatial = list(image.shape[2:])
        applied = draw(b) < cfg.elastic_probability
        coarse = [max(2, math.ceil(n / cfg.elastic_spacing) + 1) for n in spatial]
        points = (draw(b, d, *coarse) * 2 - 1) * cfg.elastic_magnitude
        mode = "bicubic" if d == 2 else "trilinear"
        field = F.interpolate(points, size=spatial, mode=mode, align_corners=True)
        # grid component k moves along spatial axis d - 1 - k (x is the last axis); pixels -> grid units (2 / n)
        units = torch.tensor([2.0 / spatial[d - 1 - k] for k in range(d)], device=field.device)
        field = field * units.view(1, d, *([1] * d)) * applied.float().view(b, 1, *([1] * d))
        return field.movedim(1, -1), applied

    def _blur(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Gaussian blur with one sigma per sample on every axis; a sample not drawn is returned unchanged."""
        cfg = self.cfg
        applied = draw(b) < cfg.blur_probability
        sigma = draw(b) * cfg.blur_sigma
        radius = max(1, math.ceil(3 * cfg.blur_sigma))
        x = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K); a tiny sigma gives a delta
        c = image.shape[1]
        weights = kernel.repeat_interleave(c, 0).to(image)  # (B * C, K)
        out = image.reshape(1, b * c, *image.shape[2:])
        conv = F.conv2d if self.dims == 2 else F.conv3d
        for axis in range(self.dims):
            shape = [1] * self.dims
            shape[axis] = 2 * radius + 1
            pad = [0, 0] * self.dims
            pad[2 * (self.dims - 1 - axis)] = pad[2 * (self.dims - 1 - axis) + 1] = radius
            out = conv(F.pad(out, pad, mode="replicate"), weights.view(b * c, 1, *shape), groups=b * c)
        out = out.reshape(image.shape)
        return torch.where(applied.view(b, *([1] * (image.ndim - 1))), out, image)

    def _gamma(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Gamma on each channel rescaled to 0..1 by its min and max; constant channels stay as they are."""
        cfg = self.cfg
        applied = draw(b) < cfg.gamma_probability
        gamma = (1 + (draw(b) * 2 - 1) * cfg.gamma).view(b, *([1] * (image.ndim - 1))).to(image)
        flat = image.flatten(2)
        low = flat.amin(2).view(*image.shape[:2], *([1] * self.dims))
        high = flat.amax(2).view(*image.shape[:2], *([1] * self.dims))
        span = high - low
        unit = ((image - low) / span.clamp_min(1e-12)).clamp(0, 1)
        out = torch.where(span > 0, unit**gamma * span + low, image)
        return torch.where(applied.view(b, *([1] * (image.ndim - 1))), out, image)

    def _colour(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Saturation (chroma scaled about each pixel's gray) and hue (chroma turned about the gray axis) of RGB
        batches, each drawn per sample with ``cfg.probability``; both keep every pixel's gray (channel mean)."""
        cfg = self.cfg
        if image.shape[1] != 3:
            raise ValueError(f"saturation and hue need RGB images (3 channels), got {image.shape[1]} channels")
        shape = (b, 1, *([1] * self.dims))
        if cfg.saturation > 0:
            apply = (draw(b) < cfg.probability).float()
            factor = (1 + (draw(b) * 2 - 1) * cfg.saturation * apply).view(shape).to(image)
            gray = image.mean(1, keepdim=True)
            image = gray + (image - gray) * factor
        if cfg.hue > 0:
            apply = (draw(b) < cfg.probability).float()
            angle = (draw(b) * 2 - 1) * cfg.hue * 2 * math.pi * apply
            cos, sin = torch.cos(angle), torch.sin(angle)
            # Rodrigues' rotation about the unit gray axis k = (1, 1, 1) / sqrt(3): cos I + sin [k]x + (1 - cos) k k^T
            k = torch.full((3,), 1 / math.sqrt(3), device=angle.device)
            cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=angle.device)
            cross = cross / math.sqrt(3)
            turn = (cos.view(b, 1, 1) * torch.eye(3, device=angle.device) + sin.view(b, 1, 1) * cross
                    + (1 - cos).view(b, 1, 1) * torch.outer(k, k))
            image = torch.einsum("bij,bj...->bi...", turn.to(image), image)
        return image

    def _affine(self, b: int, draw: Callable[..., torch.Tensor]) -> torch.Tensor | None:
        cfg = self.cfg
        turn = cfg.rotate90 and self.dims == 2
        if not (turn or cfg.rotate_degrees > 0 or cfg.scale > 0):
            return None
        apply = (draw(b) < cfg.probability).float()
        angle = (draw(b) * 2 - 1) * math.radians(cfg.rotate_degrees) * apply
        zoom = 1 + (draw(b) * 2 - 1) * cfg.scale * apply
        if turn:
            quarter = torch.floor(draw(b) * 4) * (draw(b) < cfg.probability).float()
            angle = angle + quarter * (math.pi / 2)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        if self.dims == 2:
            zero = torch.zeros_like(cos)
            return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        # 3D: rotate in the plane of the first two axes (in-plane, as slices usually are), zoom all axes
        theta = torch.zeros(b, 3, 4, device=cos.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 2, 2] = 1 / zoom
        return theta

    def _intensity(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor],
                   generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        cfg = self.cfg
        shape = (b, *([1] * (image.ndim - 1)))
        if cfg.contrast > 0:
            apply = (draw(b) < cfg.probability).float()
            factor = 1 + (draw(b) * 2 - 1) * cfg.contrast * apply
            image = image * factor.view(shape)
        if cfg.brightness > 0:
            apply = (draw(b) < cfg.probability).float()
            image = image + ((draw(b) * 2 - 1) * cfg.brightness * apply).view(shape)
        if cfg.noise_std > 0:
            apply = (draw(b) < cfg.probability).float().view(shape)
            if isinstance(generator, torch.Generator):
                noise = torch.randn(tuple(image.shape), generator=generator).to(image)
            else:
                noise = torch.stack([torch.randn(tuple(image.shape[1:]), generator=g) for g in generator]).to(image)
            image = image + noise * cfg.noise_std * apply
        return image


KEYS = ("image", "label")


class SampleAugmentd(Randomizable, MapTransform):
    """The elastic, blur and gamma ops of :class:`BatchAugment` on one ``{"image", "label"}`` sample.

    Runs the batch code on a batch of one, with a generator seeded from MONAI's random state, so volume patches
    get the same ops as 2D batches and ``set_random_state`` makes them repeatable.

    Args:
        cfg: The ``data.augment`` section; only its elastic, blur and gamma keys are used here.
        spatial_dims: 2 or 3.

    Example:
        >>> op = SampleAugmentd(AugmentConfig(blur_probability=1.0), spatial_dims=3)
        >>> out = op.set_random_state(seed=0)({"image": torch.rand(1, 6, 6, 6), "label": torch.zeros(1, 6, 6, 6)})
        >>> tuple(out["image"].shape), tuple(out["label"].shape)
        ((1, 6, 6, 6), (1, 6, 6, 6))
    """

    def __init__(self, cfg: AugmentConfig, *, spatial_dims: int) -> None:
        MapTransform.__init__(self, KEYS)
        only = cfg.model_copy(update={"flip": False, "rotate90": False, "rotate_degrees": 0.0, "scale": 0.0,
                                      "brightness": 0.0, "contrast": 0.0, "noise_std": 0.0, "crop_probability": 0.0})
        self.batch = BatchAugment(only, spatial_dims=spatial_dims)

    def randomize(self, data: Any = None) -> None:
        """Draw the seed of this sample's generator."""
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Any) -> dict[str, Any]:
        self.randomize()
        out = dict(data)
        image, label = (_plain(out[k]) for k in KEYS)
        moved_image, moved_label = self.batch(image[None].float(), label[None],
                                              torch.Generator().manual_seed(self._seed))
        out["image"], out["label"] = moved_image[0], moved_label[0]
        return out


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor (a MONAI MetaTensor loses its metadata)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def build_train_transforms(cfg: AugmentConfig, *, spatial_dims: int) -> Compose:
    """Random augmentation applied to ``{"image": (C, *spatial) float, "label": (1, *spatial)}`` samples.

    Spatial ops move image and label together (label with nearest-neighbour); intensity ops touch the
    image only; elastic deformation, blur and gamma come last, through :class:`SampleAugmentd`. Returns a plain
    ``monai.transforms.Compose`` (``print`` shows it).
    """
    p = cfg.probability
    ops: list[Callable[..., Any]] = []
    if cfg.flip:
        ops += [RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if cfg.rotate90:
        ops.append(RandRotate90d(KEYS, prob=p, max_k=3, spatial_axes=(0, 1)))
    if cfg.rotate_degrees > 0 or cfg.scale > 0:
        angle = math.radians(cfg.rotate_degrees)
        rotate = angle if spatial_dims == 2 else (angle, angle, angle)
        ops.append(
            RandAffined(
                KEYS,
                prob=p,
                rotate_range=rotate,
                scale_range=cfg.scale,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if cfg.contrast > 0:
        ops.append(RandScaleIntensityd("image", factors=cfg.contrast, prob=p))
    if cfg.brightness > 0:
        ops.append(RandShiftIntensityd("image", offsets=cfg.brightness, prob=p))
    if cfg.noise_std > 0:
        ops.append(RandGaussianNoised("image", prob=p, std=cfg.noise_std))
    if cfg.elastic_probability > 0 or cfg.blur_probability > 0 or cfg.gamma_probability > 0:
        ops.append(SampleAugmentd(cfg, spatial_dims=spatial_dims))
    return Compose(ops)
