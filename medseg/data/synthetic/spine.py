"""Synthetic 3D spine CT phantoms in HU with vertebra labels (nnU-Net / Medical Segmentation Decathlon layout).

- :func:`make_spine_phantom`: one phantom volume and its label map.
- :func:`make_spine_dataset`: ``n`` cases in ``imagesTr/`` and ``labelsTr/``.

Deterministic like :mod:`medseg.data.synthetic.polyp`: the same arguments give byte-identical files, and case ``i``
uses its own random stream derived from ``(seed, i)``.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.data.synthetic.common import case_rng, dataset_folder, write_readme

__all__ = ["make_spine_dataset", "make_spine_phantom"]


def _check_spine_args(
    shape: Sequence[int],
    spacing: Sequence[float],
    n_vertebrae: int,
    first_label: int,
    label_step: int,
) -> None:
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must have 3 sizes, each >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must have 3 positive values in mm, got {tuple(spacing)}")
    if n_vertebrae < 1:
        raise ValueError(f"n_vertebrae must be >= 1, got {n_vertebrae}")
    last = first_label + (n_vertebrae - 1) * label_step
    if first_label < 1 or label_step < 1 or last > 255:
        raise ValueError(
            f"labels first_label={first_label}, label_step={label_step} must be >= 1 and "
            f"the last one ({last}) <= 255 to fit uint8"
        )
    height_mm = shape[2] * spacing[2] * 0.88 / (n_vertebrae + 0.28 * (n_vertebrae - 1))
    if height_mm < 3 * spacing[2]:
        raise ValueError(
            f"shape[2]={shape[2]} slices of {spacing[2]} mm are too few for "
            f"{n_vertebrae} vertebrae; use more slices or fewer vertebrae"
        )


def _spine_arrays(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    n_vertebrae: int,
    first_label: int,
    label_step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(HU int16, labels uint8)`` arrays of shape ``shape`` (x: L, y: A, z: S)."""
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = ((np.arange(nx) - (nx - 1) / 2) * sx)[:, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy)[None, :]
    z = np.arange(nz) * sz + sz / 2

    ax = 0.44 * nx * sx * rng.uniform(0.9, 1.02)
    ay = 0.38 * ny * sy * rng.uniform(0.9, 1.02)
    body_r = np.hypot(x / ax, y / ay)  # (nx, ny)
    rvx = min(0.30 * ax, 20.0) * rng.uniform(0.9, 1.1)
    rvy = 0.8 * rvx
    cx = rng.uniform(-0.05, 0.05) * ax
    yb = rng.uniform(-0.10, 0.0) * ay
    vert_q = np.hypot((x - cx) / rvx, (y - yb) / rvy)
    rim_q = 1.0 - 2.0 / min(rvx, rvy)  # ~2 mm cortical shell
    canal_r = 0.45 * rvy
    yc = yb - rvy - canal_r - 1.0
    canal_d = np.hypot(x - cx, y - yc)
    arch_t = 0.35 * rvy
    arch = (canal_d > canal_r) & (canal_d <= canal_r + arch_t) & (y <= yc + 0.3 * canal_r)
    spinous = (np.abs(x - cx) <= 2.5) & (y < yc) & (y >= yc - canal_r - arch_t - 0.5 * rvy)
    posterior = (arch | spinous) & (body_r < 0.85)

    length = nz * sz
    unit = 0.88 * length / (n_vertebrae + 0.28 * (n_vertebrae - 1))
    vert_h, disc_h = unit, 0.28 * unit
    z0 = 0.06 * length + rng.uniform(-0.5, 0.5) * 0.06 * length

    noise = rng.standard_normal(shape).astype(np.float32)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    smooth /= smooth.std() + 1e-6
    base = np.full(shape, -1000.0, dtype=np.float32)
    sd = np.full(shape, 6.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    def paint(xy: np.ndarray, zs: np.ndarray, hu: float, noise_sd: float) -> None:
        region = xy[:, :, None] & zs[None, None, :]
        base[region] = hu
        sd[region] = noise_sd

    everywhere = np.ones(nz, dtype=bool)
    paint(body_r <= 1.0, everywhere, -100.0, 12.0)  # subcutaneous fat
    paint(body_r <= 0.88, everywhere, 35.0, 10.0)  # soft tissue
    for k in range(n_vertebrae):
        start = z0 + k * (vert_h + disc_h)
        in_vert = (z >= start) & (z < start + vert_h)
        endplate = in_vert & ((z < start + 1.5) | (z >= start + vert_h - 1.5))
        paint(vert_q <= 1.0, in_vert, 200.0, 25.0)  # cancellous bone
        paint((vert_q <= 1.0) & (vert_q > rim_q), in_vert, 600.0, 40.0)  # cortical rim
        paint(vert_q <= 1.0, endplate, 600.0, 40.0)  # endplates
        paint(posterior, in_vert, 450.0, 40.0)  # arch and spinous process
        region = ((vert_q <= 1.0) | posterior)[:, :, None] & in_vert[None, None, :]
        labels[region] = first_label + k * label_step
        if k < n_vertebrae - 1:
            in_disc = (z >= start + vert_h) & (z < start + vert_h + disc_h)
            paint(vert_q <= 0.97, in_disc, 80.0, 8.0)  # intervertebral disc
    paint(canal_d <= canal_r, everywhere, 20.0, 6.0)  # spinal canal
    labels[(canal_d <= canal_r)[:, :, None] & everywhere[None, None, :]] = 0

    hu = base + sd * noise + np.where(base > -500, 6.0 * smooth, 0.0)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Save as NIfTI-1; ``.nii.gz`` is gzipped with a zero timestamp so bytes are reproducible."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: output must end with .nii or .nii.gz")
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle,
        ):
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def _spine_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS+ affine with the given spacing, volume centred on the world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
    return affine


def make_spine_phantom(
    path_image: Path,
    path_label: Path,
    *,
    shape: tuple[int, int, int] = (64, 64, 96),
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    n_vertebrae: int = 5,
    seed: int = 0,
    first_label: int = 26,
    label_step: int = 1,
) -> tuple[Path, Path]:
    """Write a synthetic spine CT phantom (HU) and its vertebra label map as NIfTI.

    Axes are RAS+ (x: left -> Right, y: posterior -> Anterior, z: inferior -> Superior).
    The image holds air (-1000 HU) around an elliptic body: a fat layer (-100 HU) around
    soft tissue (~35 HU), a vertebral column along z (cancellous bone ~200 HU in a ~600 HU
    cortical shell with endplates, posterior arch and spinous process ~450 HU), discs (~80 HU)
    between vertebrae and a posterior spinal canal (~20 HU), all with Gaussian noise.
    Vertebra ``k`` (0 = most inferior) is labelled ``first_label + k * label_step``
    (TotalSegmentator-like ids, e.g. 26..30); everything else is 0.

    Args:
        path_image: Output ``.nii.gz``/``.nii`` file for the int16 HU image.
        path_label: Output ``.nii.gz``/``.nii`` file for the uint8 label map.
        shape: Volume size in voxels ``(X, Y, Z)``.
        spacing: Voxel size in mm.
        n_vertebrae: Number of vertebrae along z.
        seed: Random seed (noise and small geometry changes); same seed, same files.
        first_label: Label of the most inferior vertebra.
        label_step: Label increment from one vertebra to the next above it.

    Returns:
        ``(path_image, path_label)``.

    Raises:
        ValueError: If an argument is out of range or a path has the wrong suffix.
    """
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    _check_spine_args(shape, spacing, n_vertebrae, first_label, label_step)
    rng = np.random.default_rng(seed)
    hu, labels = _spine_arrays(rng, shape, spacing, n_vertebrae, first_label, label_step)
    affine = _spine_affine(shape, spacing)
    return _save_nifti(hu, affine, Path(path_image)), _save_nifti(labels, affine, Path(path_label))


def make_spine_dataset(
    root: Path,
    *,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (64, 64, 96),
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    n_vertebrae: int = 5,
    first_label: int = 26,
    label_step: int = 1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write synthetic spine CT cases in the nnU-Net / Decathlon layout.

    Files: ``root/imagesTr/case_000.nii.gz``, ``root/labelsTr/case_000.nii.gz`` (see
    :func:`make_spine_phantom`) and ``root/README.txt`` marking the data as synthetic.
    Each case varies ``shape`` by up to about +-12 % per axis and moves and resizes the
    body and spine a little.

    Args:
        root: Output folder (created).
        n_cases: Number of cases.
        shape: Nominal volume size in voxels ``(X, Y, Z)``.
        spacing: Voxel size in mm.
        n_vertebrae: Vertebrae per case.
        first_label: Label of the most inferior vertebra.
        label_step: Label increment per vertebra.
        seed: Random seed; the same arguments give byte-identical files.
        overwrite: Write into a ``root`` that is not empty, replacing everything in it (once the new files are
            complete).

    Returns:
        ``root``.

    Raises:
        ValueError: If an argument is out of range.
        ConfigError: ``root`` is a file.
        OutputExistsError: ``root`` is a folder that is not empty and not ``overwrite`` (nothing is written).
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    _check_spine_args(shape, spacing, n_vertebrae, first_label, label_step)
    root = Path(root)
    with dataset_folder(root, overwrite) as build:
        for index in range(n_cases):
            rng = case_rng(seed, index)
            scale = rng.uniform(0.88, 1.12, size=3)
            case_shape = tuple(max(16, round(s * f)) for s, f in zip(shape, scale, strict=True))
            case_shape = (case_shape[0], case_shape[1], max(case_shape[2], int(shape[2])))
            hu, labels = _spine_arrays(rng, case_shape, spacing, n_vertebrae, first_label, label_step)
            affine = _spine_affine(case_shape, spacing)
            _save_nifti(hu, affine, build / "imagesTr" / f"case_{index:03d}.nii.gz")
            _save_nifti(labels, affine, build / "labelsTr" / f"case_{index:03d}.nii.gz")
        last = first_label + (n_vertebrae - 1) * label_step
        write_readme(
            build,
            [
                "Synthetic CT spine phantoms in HU (imagesTr/, int16), vertebra labels (labelsTr/).",
                f"Labels: 0 background, vertebrae {first_label}..{last} (step {label_step}) "
                + "from inferior to superior.",
                f"Parameters: n_cases={n_cases}, shape={tuple(shape)}, spacing_mm={spacing}, "
                + f"n_vertebrae={n_vertebrae}, seed={seed}",
            ],
        )
    return root
