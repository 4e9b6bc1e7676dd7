"""Per-structure statistics of a label map over the image it segments: size, intensity, position, shape.

This is the job scikit-image has in medseg (a declared dependency that nothing imported before):
:func:`skimage.measure.regionprops` over the class-index map gives each structure its voxel count, bounding
box, centroid and its mask cropped to the box, and :func:`skimage.measure.label` counts the connected
components inside that crop. numpy summarises the intensities (mean, std, median, percentiles).

Conventions (the same in the Python objects, the JSON sidecars and ``statistics.csv``):

* **intensity**: the input image as read (HU for CT), on its own grid; the label map must lie on that grid.
  ``std`` is the population standard deviation (``ddof=0``: the structure's voxels are all of it), percentiles
  use numpy's default linear interpolation, ``median`` is the 50th percentile.
* **bounding box**: voxel indices ``(i, j, k)`` with the maximum *inclusive*; ``extent_*_mm`` is the box's size
  along each voxel axis from voxel edge to voxel edge, ``(max - min + 1) * spacing``.
* **centroid**: the mean voxel position ``(i, j, k)``, mapped through the affine to world millimetres twice:
  RAS+ (``centroid_ras_*``: +x Right, +y Anterior, +z Superior; medseg's and nibabel's convention) and LPS
  (``centroid_lps_*``: +x Left, +y Posterior, +z Superior; the ITK/SimpleITK/DICOM convention).
* **components**: connected components with full connectivity, 26 neighbours in 3D (faces, edges and corners),
  8 in 2D.
* **touches_border**: the structure has a voxel on the first or last slice of some axis (it may be cut off).
* **absent structure**: ``voxels`` 0, volume 0, intensity, box and centroid ``None`` (JSON ``null``, empty in
  the CSV), ``components`` 0, ``touches_border`` false.

2D image models (:func:`mask_statistics`) get the same per mask, in pixels: a PNG/JPEG carries no pixel
spacing, so there is no area in mm² and no world position; intensities are those of the gray (luminance)
image, rows and columns replace ``i, j, k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.data.labels import LabelMap
from medseg.errors import DataError
from medseg.io.volume import LPS_RAS, Volume

__all__ = [
    "IMAGE_COLUMNS",
    "VOLUME_COLUMNS",
    "IntensityStats",
    "MaskStats",
    "StructureStats",
    "mask_statistics",
    "statistics_section",
    "structure_statistics",
    "voxel_volume_mm3",
]

#: Largest difference (mm) between the affines of an image and its label map that still counts as one grid
#: (NIfTI stores the affine in float32, so a label map written and read back differs in the last digits).
GRID_TOLERANCE_MM = 1e-3

_INTENSITY = ("mean", "std", "median", "min", "max", "p05", "p95")
_IJK, _XYZ, _RC = ("i", "j", "k"), ("x", "y", "z"), ("row", "col")

#: Fields of one structure of a volume, in order (``statistics.csv`` puts ``case`` before them).
VOLUME_COLUMNS: tuple[str, ...] = (
    "index", "name", "value", "voxels", "volume_mm3", "volume_ml",
    *(f"intensity_{s}" for s in _INTENSITY),
    *(f"bbox_min_{a}" for a in _IJK), *(f"bbox_max_{a}" for a in _IJK), *(f"extent_{a}_mm" for a in _IJK),
    *(f"centroid_{a}" for a in _IJK), *(f"centroid_ras_{a}_mm" for a in _XYZ), *(f"centroid_lps_{a}_mm" for a in _XYZ),
    "components", "touches_border",
)
#: Fields of one mask of a 2D image, in order.
IMAGE_COLUMNS: tuple[str, ...] = (
    "index", "name", "value", "pixels",
    *(f"intensity_{s}" for s in _INTENSITY),
    *(f"bbox_min_{a}" for a in _RC), *(f"bbox_max_{a}" for a in _RC), *(f"centroid_{a}" for a in _RC),
    "components", "touches_border",
)


@dataclass(frozen=True)
class IntensityStats:
    """Summary of the image values inside one structure."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    p05: float
    p95: float

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats:
        """Summarise a non-empty 1D array (population std, numpy linear percentiles)."""
        v = np.asarray(values, dtype=np.float64)
        p05, median, p95 = np.percentile(v, [5.0, 50.0, 95.0])
        return cls(float(v.mean()), float(v.std()), float(median), float(v.min()), float(v.max()),
                   float(p05), float(p95))


@dataclass(frozen=True)
class _Region:
    """One class in index space (any number of dimensions); what volumes and 2D masks share."""

    count: int
    intensity: IntensityStats | None
    bbox_min: tuple[int, ...] | None
    bbox_max: tuple[int, ...] | None  # inclusive
    centroid: tuple[float, ...] | None
    components: int
    touches_border: bool


@dataclass(frozen=True)
class StructureStats:
    """Statistics of one structure (a foreground class) of a volume; see the module docstring for conventions.

    Attributes:
        index: Class index (1..K-1). name: Class name. value: Its label value in the output.
        voxels: Voxel count. volume_mm3: Volume in mm³ (``volume_ml`` in millilitres).
        intensity: Image values inside, ``None`` when absent.
        bbox_min, bbox_max: Voxel index ``(i, j, k)`` bounds, inclusive. extent_mm: Box size along i, j, k.
        centroid_ijk: Mean voxel index. centroid_ras_mm, centroid_lps_mm: The same point in world mm.
        components: Connected components (26-connectivity). touches_border: A voxel on the volume's border.
    """

    index: int
    name: str
    value: int
    voxels: int
    volume_mm3: float
    intensity: IntensityStats | None
    bbox_min: tuple[int, int, int] | None
    bbox_max: tuple[int, int, int] | None
    extent_mm: tuple[float, float, float] | None
    centroid_ijk: tuple[float, float, float] | None
    centroid_ras_mm: tuple[float, float, float] | None
    centroid_lps_mm: tuple[float, float, float] | None
    components: int
    touches_border: bool

    @property
    def volume_ml(self) -> float:
        """Volume in millilitres (cm³)."""
        return self.volume_mm3 / 1000.0

    def as_row(self) -> dict[str, Any]:
        """Flat ``{column: value}`` in :data:`VOLUME_COLUMNS` order (JSON-ready: plain Python values)."""
        row: dict[str, Any] = {"index": self.index, "name": self.name, "value": self.value, "voxels": self.voxels,
                               "volume_mm3": self.volume_mm3, "volume_ml": self.volume_ml}
        row |= _intensity_row(self.intensity)
        row |= _spread("bbox_min_{}", _IJK, self.bbox_min) | _spread("bbox_max_{}", _IJK, self.bbox_max)
        row |= _spread("extent_{}_mm", _IJK, self.extent_mm) | _spread("centroid_{}", _IJK, self.centroid_ijk)
        row |= _spread("centroid_ras_{}_mm", _XYZ, self.centroid_ras_mm)
        row |= _spread("centroid_lps_{}_mm", _XYZ, self.centroid_lps_mm)
        return row | {"components": self.components, "touches_border": self.touches_border}


@dataclass(frozen=True)
class MaskStats:
    """Statistics of one mask (a foreground class) of a 2D image, in pixels (no spacing is known).

    Attributes:
        index, name, value: The class, as in :class:`StructureStats`. pixels: Pixel count (the area, in pixels).
        intensity: Gray values inside, ``None`` when absent.
        bbox_min, bbox_max: ``(row, col)`` bounds, inclusive. centroid: Mean ``(row, col)``.
        components: Connected components (8-connectivity). touches_border: A pixel on the image border.
    """

    index: int
    name: str
    value: int
    pixels: int
    intensity: IntensityStats | None
    bbox_min: tuple[int, int] | None
    bbox_max: tuple[int, int] | None
    centroid: tuple[float, float] | None
    components: int
    touches_border: bool

    def as_row(self) -> dict[str, Any]:
        """Flat ``{column: value}`` in :data:`IMAGE_COLUMNS` order."""
        row: dict[str, Any] = {"index": self.index, "name": self.name, "value": self.value, "pixels": self.pixels}
        row |= _intensity_row(self.intensity)
        row |= _spread("bbox_min_{}", _RC, self.bbox_min) | _spread("bbox_max_{}", _RC, self.bbox_max)
        row |= _spread("centroid_{}", _RC, self.centroid)
        return row | {"components": self.components, "touches_border": self.touches_border}


def structure_statistics(image: Volume, labels: Volume, label_map: LabelMap) -> list[StructureStats]:
    """Statistics of every foreground class of ``labels`` over ``image`` (see the module docstring).

    Args:
        image: The volume that was segmented, as read (its values are summarised, e.g. HU).
        labels: Label values on the same grid (what :func:`~medseg.prediction.volume.predict_volume` returns,
            or a label map read from a file).
        label_map: Maps label values to classes; class 0 (background) gets no statistics.

    Returns:
        One :class:`StructureStats` per class 1..K-1, in class order, absent classes included.

    Raises:
        TypeError: ``image`` or ``labels`` is not a Volume, or ``label_map`` not a LabelMap.
        DataError: The two volumes differ in shape or affine (by more than 1 µm), or ``labels`` holds a value
            that ``label_map`` does not know.

    Example:
        >>> img = Volume(np.arange(24.0).reshape(2, 3, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
        >>> lab = Volume((img.array >= 20).astype(np.uint8), img.affine)
        >>> s, = structure_statistics(img, lab, LabelMap.from_mapping({0: "background", 1: "tip"}))
        >>> s.voxels, s.volume_mm3, s.intensity.mean, s.bbox_min, s.bbox_max, s.components, s.touches_border
        (4, 32.0, 21.5, (1, 2, 0), (1, 2, 3), 1, True)
        >>> s.centroid_ras_mm, s.centroid_lps_mm
        ((2.0, 4.0, 3.0), (-2.0, -4.0, 3.0))
    """
    _check_types(image, labels, label_map, Volume)
    where = str(labels.meta.get("path", "labels"))
    if labels.shape != image.shape:
        raise DataError(f"{where}: label map has shape {labels.shape} but the image has {image.shape}; "
                        "statistics need both on one grid")
    gap = float(np.abs(labels.affine - image.affine).max())
    if gap > GRID_TOLERANCE_MM:
        raise DataError(f"{where}: label map affine differs from the image's by up to {gap:.4g} mm; statistics "
                        f"need both on one grid (allowed {GRID_TOLERANCE_MM} mm)")
    classes, _ = label_map.to_class(np.asarray(labels.array), source=where)
    affine, spacing = image.affine, np.asarray(image.spacing)
    voxel_mm3 = voxel_volume_mm3(affine)
    out = []
    regions = _regions(image.array, classes, label_map.num_classes)
    for index, (cls, region) in enumerate(zip(label_map.classes[1:], regions, strict=True), start=1):
        extent = ras = lps = None
        if region.bbox_min is not None and region.bbox_max is not None and region.centroid is not None:
            size = np.asarray(region.bbox_max) - np.asarray(region.bbox_min) + 1
            extent = _triple(size * spacing)
            ras_point = affine[:3, :3] @ np.asarray(region.centroid) + affine[:3, 3]
            ras, lps = _triple(ras_point), _triple(LPS_RAS @ ras_point)
        out.append(StructureStats(
            index, cls.name, cls.values[0], region.count, region.count * voxel_mm3, region.intensity,
            _int_triple(region.bbox_min), _int_triple(region.bbox_max), extent,
            _triple(region.centroid), ras, lps, region.components, region.touches_border))
    return out


def mask_statistics(gray: np.ndarray, mask: np.ndarray, label_map: LabelMap) -> list[MaskStats]:
    """Statistics of every foreground class of a 2D mask over its gray image (see the module docstring).

    Args:
        gray: The image's luminance, shape ``(H, W)`` (``medseg predict`` reads it with Pillow's ``"L"``
            conversion, ITU-R 601-2 luma, from the input file).
        mask: Label values, shape ``(H, W)``.
        label_map: Maps label values to classes; class 0 gets no statistics.

    Returns:
        One :class:`MaskStats` per class 1..K-1, absent classes included.

    Raises:
        TypeError: A wrong argument type. DataError: Shapes differ or are not 2D, or an unknown label value.

    Example:
        >>> gray = np.array([[10, 20, 0], [30, 0, 0]], np.uint8)
        >>> m, = mask_statistics(gray, (gray > 0).astype(np.uint8) * 255, LabelMap.from_mapping({0: "bg", 255: "fg"}))
        >>> m.pixels, m.intensity.mean, m.bbox_min, m.bbox_max, m.centroid, m.components
        (3, 20.0, (0, 0), (1, 1), (0.3333333333333333, 0.3333333333333333), 1)
    """
    _check_types(gray, mask, label_map, np.ndarray)
    if gray.ndim != 2 or gray.shape != mask.shape:
        raise DataError(f"mask_statistics: needs a 2D gray image and a mask of its shape, got {gray.shape} and "
                        f"{mask.shape}")
    classes, _ = label_map.to_class(np.asarray(mask), source="mask")
    out = []
    regions = _regions(gray, classes, label_map.num_classes)
    for index, (cls, region) in enumerate(zip(label_map.classes[1:], regions, strict=True), start=1):
        out.append(MaskStats(
            index, cls.name, cls.values[0], region.count, region.intensity,
            _pair(region.bbox_min), _pair(region.bbox_max), _pair(region.centroid),
            region.components, region.touches_border))
    return out


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm³: ``|det|`` of the affine's 3x3 part, as a triple product, so that an axis-aligned
    affine (any flips and axis order) gives exactly the product of its spacings.

    Example:
        >>> voxel_volume_mm3(np.diag([2.0, 2.0, 2.0, 1.0])), float(abs(np.linalg.det(np.diag([2.0, 2.0, 2.0]))))
        (8.0, 7.999999999999998)
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(abs(np.dot(a[:, 0], np.cross(a[:, 1], a[:, 2]))))


def statistics_section(stats: Sequence[StructureStats] | Sequence[MaskStats]) -> dict[str, Any]:
    """The ``statistics`` section of a JSON sidecar: the conventions in words, then one row per structure."""
    volumes = all(isinstance(s, StructureStats) for s in stats)
    return {
        "intensity": ("input volume as read (HU for CT), on its own grid" if volumes
                      else "gray (luminance, Pillow 'L') image of the input"),
        "std": "population (ddof=0)",
        "percentiles": "numpy linear interpolation; median = 50th",
        "bbox": "voxel indices i, j, k, max inclusive" if volumes else "pixel rows and columns, max inclusive",
        "centroid": ("mean voxel index; ras = +x Right +y Anterior +z Superior mm, lps = +x Left +y Posterior "
                     "+z Superior mm (ITK/DICOM)") if volumes else "mean pixel (row, col); no spacing is known",
        "connectivity": 26 if volumes else 8,
        "structures": [s.as_row() for s in stats],
    }


# ------------------------------------------------------------------------------------------- helpers
def _regions(intensity: np.ndarray, classes: np.ndarray, num_classes: int) -> list[_Region]:
    """Index-space statistics of classes 1..num_classes-1 (regionprops for the boxes, label for components)."""
    from skimage.measure import label, regionprops

    shape = np.asarray(classes.shape)
    found = {int(r.label): r for r in regionprops(np.asarray(classes))}
    out = []
    for c in range(1, num_classes):
        r = found.get(c)
        if r is None:
            out.append(_Region(0, None, None, None, None, 0, False))
            continue
        low, high = np.asarray(r.bbox[: classes.ndim]), np.asarray(r.bbox[classes.ndim:])  # high is exclusive
        inside = r.image  # the class's mask cropped to its box
        _, components = label(inside, connectivity=classes.ndim, return_num=True)
        out.append(_Region(
            count=int(r.area), intensity=IntensityStats.of(intensity[r.slice][inside]),
            bbox_min=tuple(int(v) for v in low), bbox_max=tuple(int(v) - 1 for v in high),
            centroid=tuple(float(v) for v in r.centroid), components=int(components),
            touches_border=bool((low == 0).any() or (high == shape).any())))
    return out


def _check_types(image: object, labels: object, label_map: object, kind: type) -> None:
    for name, value in (("image", image), ("labels", labels)):
        if not isinstance(value, kind):
            raise TypeError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
    if not isinstance(label_map, LabelMap):
        raise TypeError(f"label_map: expected a LabelMap, got {type(label_map).__name__}")


def _intensity_row(stats: IntensityStats | None) -> dict[str, Any]:
    return {f"intensity_{s}": None if stats is None else getattr(stats, s) for s in _INTENSITY}


def _spread(pattern: str, axes: tuple[str, ...], values: Sequence[Any] | None) -> dict[str, Any]:
    return {pattern.format(a): None if values is None else values[n] for n, a in enumerate(axes)}


def _triple(values: Sequence[float] | np.ndarray | None) -> tuple[float, float, float] | None:
    return None if values is None else (float(values[0]) + 0.0, float(values[1]) + 0.0, float(values[2]) + 0.0)


def _int_triple(values: Sequence[int] | None) -> tuple[int, int, int] | None:
    return None if values is None else (int(values[0]), int(values[1]), int(values[2]))


def _pair(values: Sequence[Any] | None) -> Any:
    return None if values is None else (values[0], values[1])
