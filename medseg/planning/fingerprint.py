"""A data set's fingerprint: what ``medseg plan`` looks at before it chooses any setting.

Per case: shape and spacing (in the canonical RAS axis order, so cases stored in different orientations
compare), the orientation code, intensity statistics over foreground voxels (a fixed-seed sample of at
most :data:`SAMPLES_PER_CASE` voxels: percentiles 0.5 / 50 / 99.5, mean, std, min, max), and the voxel count
of every label value. Over the set: which cases hold each label value, and the pooled foreground percentiles.

Volumes with several input channels (nnU-Net's ``case_0000``, ``case_0001`` ...) get those intensity statistics
per channel, at the same sampled foreground voxels (``CaseFingerprint.channel_intensity``, pooled in
``Fingerprint.channels`` with each channel's name and modality: ``dataset.json`` ``channel_names`` / ``modality``
when present, else the Hounsfield test on that channel's values). ``intensity`` and ``modality`` are the first
channel's.
2D image sets record each image's size and colour mode and the mask values instead.

Everything is deterministic (sorted cases, seeded samples), so the same data gives the same
``fingerprint.json`` byte for byte, and ``medseg plan`` the same config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation

from medseg.config.kinds import DataKind
from medseg.data.pairing import IMAGES, VOLUMES, Pair, find_pairs
from medseg.data.volume_preprocessing import check_same_channel_grid
from medseg.errors import ConfigError, DataError
from medseg.io.images import IMAGE_SUFFIXES, read_image, read_mask
from medseg.io.volume import VOLUME_SUFFIXES
from medseg.io.volume_io import read_volume
from medseg.progress import progress_bar

__all__ = ["CaseFingerprint", "ChannelFingerprint", "DatasetLayout", "Fingerprint", "SAMPLES_PER_CASE",
           "dataset_json_labels", "detect_layout", "fingerprint"]

log = logging.getLogger(__name__)

#: Foreground voxels sampled per case for the intensity statistics (nnU-Net samples 10,000 too).
SAMPLES_PER_CASE = 10_000
#: The percentiles recorded per case and over the set.
PERCENTILES = (0.5, 50.0, 99.5)
#: Folder pairs tried, in order, when the layout is not given: nnU-Net's raw layout, then medseg's own.
LAYOUTS = (("imagesTr", "labelsTr"), ("images", "masks"), ("imagesTr", "masksTr"))


@dataclass(frozen=True)
class DatasetLayout:
    """Where a data set's images and masks are, and what kind they are."""

    root: Path
    images_dir: str
    masks_dir: str
    kind: DataKind
    dataset_json: dict[str, Any] | None = None


@dataclass
class CaseFingerprint:
    """One case. Volumes: ``shape``/``spacing`` in RAS axis order; images: ``shape`` is ``(H, W)``."""

    case: str
    shape: list[int]
    spacing: list[float] | None
    orientation: str | None
    channels: int
    label_voxels: dict[int, int]
    intensity: dict[str, float] | None = None
    value_range: list[float] | None = None
    channel_intensity: list[dict[str, float] | None] | None = None
    channel_value_range: list[list[float]] | None = None


@dataclass
class ChannelFingerprint:
    """One input channel over the set: its name, modality (``CT`` or ``MR``: anything not CT is z-scored), why,
    and the pooled foreground intensity statistics."""

    index: int
    name: str
    modality: str
    modality_reason: str
    intensity: dict[str, float] | None


@dataclass
class Fingerprint:
    """The whole set: its cases, pooled statistics and what ``dataset.json`` said."""

    root: str
    kind: str
    images_dir: str
    masks_dir: str
    cases: list[CaseFingerprint]
    modality: str
    modality_reason: str
    intensity: dict[str, float] | None
    label_values: dict[int, dict[str, int]] = field(default_factory=dict)
    label_names: dict[int, str] | None = None
    mask_format: str = ""
    channels: list[ChannelFingerprint] = field(default_factory=list)

    def to_json(self) -> str:
        """JSON text with sorted keys (the same data gives the same bytes)."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def detect_layout(root: Path, kind: DataKind | None = None) -> DatasetLayout:
    """Find the image and mask folders of a data set and decide its kind from the file suffixes.

    Args:
        root: The data set folder (nnU-Net raw: ``imagesTr/`` + ``labelsTr/`` (+ ``dataset.json``);
            medseg: ``images/`` + ``masks/``).
        kind: Force ``volumes3d`` or ``images2d``; by default volumes when the images are NIfTI/MHA/NRRD.

    Raises:
        DataError: No known layout under ``root``, or no image files in it.
        ConfigError: ``kind`` is ``slices2d`` (plan a 3D set, then choose slices by hand).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the data set folder (with imagesTr/ + labelsTr/ or "
                        "images/ + masks/)")
    if kind is DataKind.SLICES2D:
        raise ConfigError("--kind: slices2d is not planned; plan the volumes (volumes3d) and change data.kind by hand")
    for images_dir, masks_dir in LAYOUTS:
        if (root / images_dir).is_dir() and (root / masks_dir).is_dir():
            break
    else:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(f"{root}: no imagesTr/ + labelsTr/ or images/ + masks/ folders (found {found or 'none'})")
    names = [p.name.lower() for p in (root / images_dir).iterdir() if not p.name.startswith(".")]
    volumes = sum(any(n.endswith(s) for s in VOLUME_SUFFIXES) for n in names)
    images = sum(any(n.endswith(s) for s in IMAGE_SUFFIXES) for n in names)
    if kind is None:
        if not volumes and not images:
            raise DataError(f"{root / images_dir}: no image files (volumes {', '.join(VOLUME_SUFFIXES)} or images "
                            f"{', '.join(IMAGE_SUFFIXES)})")
        kind = DataKind.VOLUMES3D if volumes >= images else DataKind.IMAGES2D
    dataset_json = _read_dataset_json(root / "dataset.json")
    return DatasetLayout(root, images_dir, masks_dir, kind, dataset_json)


def _read_dataset_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def dataset_json_labels(dataset_json: dict[str, Any] | None, source: str = "dataset.json") -> dict[int, str] | None:
    """The ``labels`` of an nnU-Net ``dataset.json`` as ``{value: name}`` (v2 ``{name: value}`` and v1
    ``{"value": name}`` both read); ``None`` when absent.

    Raises:
        DataError: Labels that are not integers, or a value used twice.

    Example:
        >>> dataset_json_labels({"labels": {"background": 0, "liver": 1}})
        {0: 'background', 1: 'liver'}
        >>> dataset_json_labels({"labels": {"0": "background", "1": "liver"}})
        {0: 'background', 1: 'liver'}
    """
    if not dataset_json or "labels" not in dataset_json:
        return None
    raw = dataset_json["labels"]
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{source}: 'labels' must be a non-empty object, found {raw!r}")
    out: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # v2: name -> value
            name, number = str(key), value
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():  # v1: "value" -> name
            name, number = value, int(key)
        else:  # v2 region-based labels (lists) are not supported
            raise DataError(f"{source}: label {key!r}: {value!r} is not an integer value (region-based labels "
                            "are not supported)")
        if int(number) != number or int(number) in out:
            raise DataError(f"{source}: label value {number!r} of {name!r} is not a unique integer")
        out[int(number)] = name
    return dict(sorted(out.items()))


def fingerprint(layout: DatasetLayout, *, progress: bool = False) -> Fingerprint:
    """Read every case of a data set once and collect its fingerprint.

    Raises:
        DataError: Unreadable files, unpaired files, channels missing or on different grids, channel names in
            dataset.json that do not match the files, or no foreground anywhere.
    """
    file_kind = VOLUMES if layout.kind is DataKind.VOLUMES3D else IMAGES
    pairs = find_pairs(layout.root, images_dir=layout.images_dir, masks_dir=layout.masks_dir, kind=file_kind)
    names = dataset_json_labels(layout.dataset_json, str(layout.root / "dataset.json"))
    count = len(pairs[0].channels) if pairs else 1
    channel_names = _channel_names(layout, count)
    cases: list[CaseFingerprint] = []
    samples: list[list[np.ndarray]] = [[] for _ in range(count)]
    with progress_bar("fingerprint", len(pairs), enabled=progress) as advance:
        for index, pair in enumerate(pairs):
            if layout.kind is DataKind.VOLUMES3D:
                case, sampled = _volume_case(pair, index)
                for channel, sample in enumerate(sampled):
                    samples[channel].append(sample)
            else:
                case = _image_case(pair)
            cases.append(case)
            advance()
    label_values: dict[int, dict[str, int]] = {}
    for case in cases:
        for value, count_ in case.label_voxels.items():
            entry = label_values.setdefault(value, {"cases": 0, "voxels": 0})
            entry["cases"] += 1
            entry["voxels"] += count_
    label_values = dict(sorted(label_values.items()))
    if len(label_values) < 2:
        raise DataError(f"{layout.root / layout.masks_dir}: every mask holds only the value "
                        f"{list(label_values)}; there is no foreground to segment")
    pooled = [np.concatenate(s) if s else np.empty(0) for s in samples]
    channels: list[ChannelFingerprint] = []
    if layout.kind is DataKind.VOLUMES3D:
        for channel in range(count):
            ranges = [c.value_range if count == 1 else (c.channel_value_range or [])[channel] for c in cases]
            modality, reason = _volume_modality(channel_names[channel], ranges)
            channels.append(ChannelFingerprint(channel, channel_names[channel] or f"channel{channel}", modality,
                                               reason, _stats(pooled[channel]) if pooled[channel].size else None))
        modality, reason = channels[0].modality, channels[0].modality_reason
    else:
        modality, reason = _image_modality(cases)
    suffixes = sorted({_suffix(p.mask) for p in pairs})
    return Fingerprint(
        root=str(layout.root), kind=layout.kind.value, images_dir=layout.images_dir, masks_dir=layout.masks_dir,
        cases=cases, modality=modality, modality_reason=reason,
        intensity=_stats(pooled[0]) if pooled[0].size else None, label_values=label_values, label_names=names,
        mask_format=",".join(suffixes), channels=channels,
    )


def _channel_names(layout: DatasetLayout, count: int) -> list[str | None]:
    """Each channel's name from ``dataset.json`` (``channel_names``, or the older ``modality``), else None.

    Raises:
        DataError: ``dataset.json`` names a different number of channels than the files have.
    """
    raw = (layout.dataset_json or {}).get("channel_names") or (layout.dataset_json or {}).get("modality")
    if not isinstance(raw, dict) or not raw:
        return [None] * count
    named = {int(k): str(v) for k, v in raw.items() if str(k).isdigit()} or dict(enumerate(map(str, raw.values())))
    if sorted(named) != list(range(count)):
        raise DataError(f"{layout.root / 'dataset.json'}: channel_names names channels {sorted(named)}, but the "
                        f"cases in {layout.root / layout.images_dir} have {count} channel file(s) "
                        f"(_0000 to _{count - 1:04d}); make them agree")
    return [named[i] for i in range(count)]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _ras_order(affine: np.ndarray) -> list[int]:
    """For each RAS world axis, the voxel axis that runs along it."""
    ornt = io_orientation(affine)
    order = [0, 0, 0]
    for voxel_axis, (world_axis, _) in enumerate(ornt):
        order[int(world_axis)] = voxel_axis
    return order


def _volume_case(pair: Pair, index: int) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """One case's fingerprint and, per channel, its sampled foreground values (the same voxels in each)."""
    images = [read_volume(path) for path in pair.channels]
    image = images[0]
    label = read_volume(pair.mask)
    if image.shape != label.shape:
        raise DataError(f"{pair.mask}: shape {label.shape} differs from its image {pair.image.name} {image.shape}")
    for other in images[1:]:
        check_same_channel_grid(image, other)
    values = np.rint(np.asarray(label.array, dtype=np.float64)).astype(np.int64)
    uniq, counts = np.unique(values, return_counts=True)
    order = _ras_order(image.affine)
    positions = np.flatnonzero(values.ravel() != 0)
    rng = np.random.default_rng(index)
    if positions.size > SAMPLES_PER_CASE:
        positions = rng.choice(positions, SAMPLES_PER_CASE, replace=False)
    sampled = [np.asarray(np.asarray(v.array).ravel()[positions], dtype=np.float64) for v in images]
    stats = [_stats(s) if s.size else None for s in sampled]
    ranges = [[float(np.min(v.array)), float(np.max(v.array))] for v in images]
    case = CaseFingerprint(
        case=pair.case_id,
        shape=[int(image.shape[a]) for a in order],
        spacing=[round(float(image.spacing[a]), 6) for a in order],
        orientation="".join(str(c) for c in aff2axcodes(image.affine)),
        channels=len(images),
        label_voxels={int(v): int(c) for v, c in zip(uniq, counts, strict=True)},
        intensity=stats[0],
        value_range=ranges[0],
        channel_intensity=stats if len(images) > 1 else None,
        channel_value_range=ranges if len(images) > 1 else None,
    )
    return case, sampled


def _image_case(pair: Pair) -> CaseFingerprint:
    image = read_image(pair.image, mode=None)
    mask = read_mask(pair.mask)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{pair.mask}: size {mask.shape[:2]} differs from its image {pair.image.name} "
                        f"{image.shape[:2]}")
    channels = 1 if image.ndim == 2 else int(image.shape[2])
    if channels >= 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        channels = 1  # gray stored as RGB
    uniq, counts = np.unique(mask, return_counts=True)
    return CaseFingerprint(
        case=pair.case_id, shape=[int(image.shape[0]), int(image.shape[1])], spacing=None, orientation=None,
        channels=min(channels, 3), label_voxels={int(v): int(c) for v, c in zip(uniq, counts, strict=True)},
    )


def _stats(values: np.ndarray) -> dict[str, float]:
    p = np.percentile(values, PERCENTILES)
    return {
        "p00_5": round(float(p[0]), 3), "p50": round(float(p[1]), 3), "p99_5": round(float(p[2]), 3),
        "mean": round(float(values.mean()), 3), "std": round(float(values.std()), 3),
        "min": round(float(values.min()), 3), "max": round(float(values.max()), 3),
    }


def _image_modality(cases: list[CaseFingerprint]) -> tuple[str, str]:
    rgb = sum(c.channels == 3 for c in cases)
    return ("rgb", f"{rgb} of {len(cases)} images are colour") if rgb else ("gray", "all images are gray")


def _volume_modality(name: str | None, ranges: list[list[float] | None]) -> tuple[str, str]:
    """CT or MR (anything not CT: per-case z-score) for one channel, from its dataset.json name or its values."""
    if name is not None:
        if name.upper() == "CT":
            return "CT", "dataset.json channel_names says CT"
        return "MR", f"dataset.json channel_names says {name!r} (not CT: per-case z-score)"
    found = [r for r in ranges if r is not None]
    if found and all(-3100 <= lo <= -500 and hi <= 32767 for lo, hi in found):
        return "CT", "no dataset.json; every volume's minimum lies in -3100..-500 HU (air), as in CT"
    return "MR", "no dataset.json and the intensities do not look like Hounsfield units: per-case z-score"
