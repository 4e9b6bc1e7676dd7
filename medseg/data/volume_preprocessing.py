"""Volume preprocessing shared by training and prediction: orientation, spacing, intensity, labels.

:class:`VolumePreprocessor` turns a :class:`~medseg.io.volume_io.Volume` into a ``(C, X, Y, Z)`` float
tensor on a canonical grid and records in a :class:`GridRecord` what it did, so predictions can be put
back on the input's exact grid:

1. reorient to ``data.orientation`` by axis permutations and flips only (nibabel ``io_orientation`` /
   ``ornt_transform`` / ``apply_orientation``; no interpolation, exactly invertible);
2. resample to about ``data.spacing_mm`` with ``torch.nn.functional.interpolate`` (images trilinear, after
   a Gaussian anti-aliasing filter when shrinking; labels ``nearest-exact``). The grid keeps the volume's
   extent (``align_corners=False``), so the new size is ``round(extent / spacing)`` and the real spacing
   differs slightly from the requested one; it is recorded;
3. intensity: CT windows in HU stacked as channels (``ct_window``), or a per-volume z-score (``zscore``).

A case may be several co-registered files (``data.channels``: nnU-Net's ``case_0000``, ``case_0001`` ...): every
file must lie on the first one's grid (:func:`check_same_channel_grid`), all take the first one's reorientation and
resampling, each its own normalisation (:class:`ChannelSpec`), and the results are stacked in channel order.

Inversion (:meth:`VolumePreprocessor.invert_probabilities`): class probabilities are resampled back to the
oriented original size trilinearly, one class at a time with a running argmax (memory: two volumes of the
original size), then the class map is turned back into the input orientation. Label maps are inverted
with nearest-neighbour (:meth:`VolumePreprocessor.invert_classes`).

The settings are a JSON-safe dict (:attr:`VolumePreprocessor.settings`) that is stored in checkpoints.

The grid work (steps 1-2 and their inverse) is in :mod:`medseg.data.volume_grid`, the grid comparisons in
:mod:`medseg.data.grid_checks`; :class:`GridRecord`, :func:`check_same_grid` and :func:`check_same_channel_grid`
are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config.schema import DataConfig
from medseg.data.grid_checks import check_same_channel_grid, check_same_grid
from medseg.data.labels import LabelMap
from medseg.data.transforms import ct_window, resolve_window
from medseg.data.volume_grid import (
    GridRecord,
    invert_classes,
    invert_probabilities,
    invert_probability_maps,
    labels_onto_grid,
    plan_grid,
    resample_image,
)
from medseg.errors import DataError
from medseg.io.volume import Volume
from medseg.io.volume_io import read_volume

__all__ = [
    "GridRecord",
    "VolumePreprocessor",
    "ChannelSpec",
    "check_same_channel_grid",
    "check_same_grid",
    "label_classes",
    "slice_axis_index",
]

_SLICE_LETTERS = {"axial": "SI", "sagittal": "LR", "coronal": "AP"}


@dataclass(frozen=True)
class ChannelSpec:
    """How one input file of a case is normalised.

    Attributes:
        name: Channel name (``"CT"``, ``"PET"``; ``"image"`` for a single-channel set).
        intensity: ``"ct_window"`` or ``"zscore"``.
        windows: ``(center_hu, width_hu)`` of each window (ct_window), each one network input channel.
    """

    name: str
    intensity: str
    windows: tuple[tuple[float, float], ...]

    @property
    def in_channels(self) -> int:
        """Network input channels this file gives: one per window, or 1 (zscore)."""
        return len(self.windows) if self.intensity == "ct_window" else 1

    def settings(self) -> dict[str, Any]:
        """JSON-safe form (an entry of the checkpoint's ``preprocessing.channels``)."""
        return {"name": self.name, "intensity": self.intensity, "windows": [list(w) for w in self.windows]}


def _channel_spec(name: str, intensity: Any, windows: Any, where: str) -> ChannelSpec:
    if intensity not in ("ct_window", "zscore"):
        raise ValueError(f"{where}.intensity: unknown {intensity!r}; choose from ct_window, zscore")
    resolved = tuple(resolve_window(tuple(w) if not isinstance(w, str) else w) for w in windows or [])
    if intensity == "ct_window" and not resolved:
        raise ValueError(f"{where}.windows: ct_window intensity needs at least one window")
    return ChannelSpec(str(name), str(intensity), resolved if intensity == "ct_window" else ())


def slice_axis_index(orientation: str, slice_axis: str) -> int:
    """Index of the axis of the canonical grid that ``slice_axis`` slices along.

    Example:
        >>> slice_axis_index("RAS", "axial"), slice_axis_index("PIR", "sagittal")
        (2, 2)
    """
    letters = _SLICE_LETTERS[slice_axis]
    return next(i for i, c in enumerate(orientation.upper()) if c in letters)


def label_classes(label: Volume, labels: LabelMap, *, tolerance: int = 0) -> np.ndarray:
    """Class indices (uint8) of a label volume; several source values may map to one class.

    Raises:
        DataError: Non-integer values, or values that belong to no class (the message lists them).
    """
    source = str(label.meta.get("path", "<array>"))
    arr = label.array
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise DataError(f"{source}: label values must be whole numbers, got non-integer floats")
        arr = rounded.astype(np.int64)
    classes, _ = labels.to_class(arr, tolerance=tolerance, source=source)
    return np.asarray(classes, dtype=np.uint8 if labels.num_classes <= 256 else np.int64)


class VolumePreprocessor:
    """Moves volumes onto the canonical training grid and results back.

    Args:
        settings: The ``preprocessing`` dict stored in checkpoints, see :meth:`from_config`.

    Example:
        >>> pre = VolumePreprocessor({"windows": [[40, 400]], "intensity": "ct_window",
        ...                           "spacing_mm": [2.0, 2.0, 2.0], "orientation": "RAS"})
        >>> vol = Volume(np.zeros((4, 4, 4), np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
        >>> image, grid = pre.prepare_image(vol)
        >>> tuple(image.shape), grid.shape_out
        ((1, 2, 2, 2), (2, 2, 2))
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        raw_channels = settings.get("channels")
        if raw_channels is not None:
            if not isinstance(raw_channels, list) or not raw_channels:
                raise ValueError(f"preprocessing.channels: need a non-empty list, got {raw_channels!r}")
            self.channels = [_channel_spec(c.get("name", f"channel{i}"), c.get("intensity"), c.get("windows"),
                                           f"preprocessing.channels[{i}]") for i, c in enumerate(raw_channels)]
        else:  # one file per case (every checkpoint written before data.channels)
            self.channels = [_channel_spec("image", settings.get("intensity", "ct_window"),
                                           settings.get("windows", []), "preprocessing")]
        self.multichannel = raw_channels is not None
        self.intensity = self.channels[0].intensity
        self.windows = list(self.channels[0].windows)
        spacing = settings.get("spacing_mm")
        self.spacing_mm = None if spacing is None else tuple(float(s) for s in spacing)
        if self.spacing_mm is not None and (len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0):
            raise ValueError(f"preprocessing.spacing_mm: need 3 positive values, got {spacing!r}")
        self.orientation = str(settings.get("orientation", "RAS")).upper()
        self.extra = {k: v for k, v in settings.items()
                      if k not in ("intensity", "windows", "spacing_mm", "orientation", "channels")}

    @classmethod
    def from_config(cls, data: DataConfig) -> VolumePreprocessor:
        """Build from the ``data`` section (kind volumes3d or slices2d)."""
        def resolved(windows: Sequence[Any] | None) -> list[list[float]]:
            return [list(resolve_window(w if isinstance(w, str) else w.model_dump())) for w in windows or []]

        channels = None if data.channels is None else [
            {"name": c.name, "intensity": c.intensity, "windows": resolved(c.windows)} for c in data.channels]
        return cls({
            "kind": data.kind,
            "windows": resolved(data.windows) if data.intensity == "ct_window" else [],
            "intensity": data.intensity,
            "spacing_mm": None if data.spacing_mm is None else list(data.spacing_mm),
            "orientation": data.orientation,
            "patch_size": list(data.patch_size),
            "slice_axis": data.slice_axis,
            **({} if channels is None else {"channels": channels}),
        })

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-safe settings (the checkpoint's ``preprocessing``); ``channels`` only for a multi-file set."""
        return {
            **self.extra,
            "windows": [list(w) for w in self.windows],
            "intensity": self.intensity,
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "orientation": self.orientation,
            **({"channels": [c.settings() for c in self.channels]} if self.multichannel else {}),
        }

    @property
    def in_channels(self) -> int:
        """Channels of a prepared image: per input file, one per window (ct_window) or 1 (zscore)."""
        return sum(c.in_channels for c in self.channels)

    @property
    def files_per_case(self) -> int:
        """Input files a case is made of (``case_0000``, ``case_0001`` ...); 1 for a single-channel set."""
        return len(self.channels)

    @property
    def half_precision(self) -> bool:
        """Whether prepared images may be kept as float16 (every channel windowed to 0..1)."""
        return all(c.intensity == "ct_window" for c in self.channels)

    def channel_naming(self) -> str:
        """How a case's files are named for this preprocessing, e.g. ``CT: <case>_0000, PET: <case>_0001``."""
        return ", ".join(f"{c.name}: <case>_{i:04d}" for i, c in enumerate(self.channels))

    def __repr__(self) -> str:
        return f"VolumePreprocessor({self.settings})"

    # --------------------------------------------------------------------------------- geometry
    def plan(self, volume: Volume) -> GridRecord:
        """The grid a volume goes to (no voxel work)."""
        return plan_grid(volume, orientation=self.orientation, spacing_mm=self.spacing_mm)

    def prepare_image(self, volume: Volume | Sequence[Volume]) -> tuple[torch.Tensor, GridRecord]:
        """Reorient, resample and normalise an image volume, or the channel volumes of one case.

        Args:
            volume: One volume, or one per input channel in channel order (:attr:`files_per_case`), all on the
                first one's grid.

        Returns:
            ``(image (C, X, Y, Z) float32, grid record)``; the grid is the first channel's.

        Raises:
            DataError: NaN/Inf voxels, a constant volume under zscore, the wrong number of channel volumes, or
                channels on different grids (naming both files).
        """
        volumes = [volume] if isinstance(volume, Volume) else list(volume)
        if len(volumes) != self.files_per_case:
            first = volumes[0].meta.get("path", "<array>") if volumes else "<no volume>"
            raise DataError(
                f"{first}: the model takes {self.files_per_case} input file(s) per case ({self.channel_naming()}), "
                f"got {len(volumes)}"
            )
        for other in volumes[1:]:
            check_same_channel_grid(volumes[0], other)
        grid = self.plan(volumes[0])
        parts = [self._normalise(resample_image(v, grid), str(v.meta.get("path", "<array>")), spec)
                 for v, spec in zip(volumes, self.channels, strict=True)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), grid

    def prepare_label(self, label: Volume, grid: GridRecord, labels: LabelMap, *, tolerance: int = 0) -> torch.Tensor:
        """Class map of a label volume on the prepared grid ``(X, Y, Z)`` uint8 (nearest-neighbour)."""
        return labels_onto_grid(label_classes(label, labels, tolerance=tolerance), grid)

    def prepare_pair(
        self, image_path: str | Path | Sequence[str | Path], label_path: str | Path, labels: LabelMap, *,
        tolerance: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, GridRecord]:
        """Read and prepare an image (or a case's channel files, in channel order) and its label volume
        (geometry checked: the label and every channel on the first channel's grid).

        Raises:
            DataError: Unreadable files, grids that differ, unknown label values.
        """
        paths = [image_path] if isinstance(image_path, (str, Path)) else list(image_path)
        images = [read_volume(p) for p in paths]
        label = read_volume(label_path)
        check_same_grid(images[0], label)
        x, grid = self.prepare_image(images)
        return x, self.prepare_label(label, grid, labels, tolerance=tolerance), grid

    # --------------------------------------------------------------------------------- inverse
    def invert_classes(self, classes: torch.Tensor | np.ndarray, grid: GridRecord) -> np.ndarray:
        """A class map on the prepared grid -> the original grid (nearest-neighbour), same dtype."""
        return invert_classes(classes, grid)

    def invert_probabilities(self, probs: torch.Tensor, grid: GridRecord, *, threshold: float | None = None
                             ) -> np.ndarray:
        """Class scores ``(K, X, Y, Z)`` on the prepared grid -> class map (uint8/int64) on the original grid.

        Each class is resampled trilinearly to the original size and the argmax kept as it goes, so memory
        stays at two original-size volumes whatever K is. With ``threshold`` (two classes only), class 1 wherever
        its resampled probability is ``>= threshold``.
        """
        return invert_probabilities(probs, grid, threshold=threshold)

    def invert_probability_maps(self, probs: torch.Tensor, grid: GridRecord) -> np.ndarray:
        """Class scores ``(K, X, Y, Z)`` on the prepared grid -> float16 ``(K, *original shape)`` on the original
        grid, class first.

        Each class is resampled trilinearly (as :meth:`invert_probabilities` does before its argmax) and stored as
        float16 before the next one, so memory stays at the float16 result plus one float32 class.
        """
        return invert_probability_maps(probs, grid)

    # --------------------------------------------------------------------------------- helpers
    def _normalise(self, x: torch.Tensor, source: str, spec: ChannelSpec) -> torch.Tensor:
        if spec.intensity == "zscore":
            std = float(x.std())
            if std < 1e-8:
                raise DataError(f"{source}: constant volume, cannot z-score normalise it")
            return ((x - x.mean()) / std).float()
        return torch.cat([ct_window(x, center_hu=c, width_hu=w) for c, w in spec.windows]).float()
