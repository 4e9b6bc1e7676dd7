"""The ``data`` section: where the data is and how a sample is prepared (pairing, split, intensity, CT windows,
input channels, volume resampling and patches). Its ``labels`` and ``augment`` subsections live in
:mod:`medseg.config.data_labels` and :mod:`medseg.config.data_augment`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator

from medseg.config.data_augment import AugmentConfig
from medseg.config.data_labels import LabelsConfig
from medseg.config.strict import PositiveFloat, PositiveInt, Strict

__all__ = ["WINDOW_PRESETS", "ChannelConfig", "DataConfig", "WindowConfig", "WindowSpec"]

#: Named CT windows, name -> (center_hu, width_hu); ``data.windows`` entries that are strings must be one of these.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    # Spine: -450..1050 HU. Narrower than "bone" (-500..1300) so cancellous bone (~150-400 HU)
    # and intervertebral discs (~80-120 HU) keep contrast, yet wide enough that paraspinal fat
    # and muscle (-100..60 HU) stay distinguishable and cortical bone (~700-1000+ HU) is not
    # saturated -- vertebra segmentation needs both the cortex outline and the soft-tissue gaps.
    "spine": (300.0, 1500.0),
}



class WindowConfig(Strict):
    """A CT window in Hounsfield units."""

    center_hu: float
    width_hu: float = Field(gt=0)


WindowSpec = str | WindowConfig


def _default_windows() -> list[WindowSpec]:
    return ["soft_tissue"]


class ChannelConfig(Strict):
    """One input channel of a multi-channel volume set (nnU-Net's ``case_0000``, ``case_0001``, ...)."""

    name: str = Field(min_length=1, description="Channel name, e.g. 'CT', 'PET', 'T1' (dataset.json channel_names).")
    intensity: Literal["ct_window", "zscore"] | None = Field(
        None, description="ct_window (the channel's windows in HU, stacked) or zscore (per case). Left out: ct_window "
        "when the name is 'CT' (any case), else zscore, as nnU-Net does.")
    windows: list[WindowSpec] | None = Field(
        None, description="CT windows of this channel (preset names or {center_hu, width_hu}); only with ct_window, "
        "where left out means ['soft_tissue'].")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _channel_defaults(data) if isinstance(data, dict) else data

    @field_validator("windows")
    @classmethod
    def _windows_fit(cls, value: list[WindowSpec] | None, info: ValidationInfo) -> list[WindowSpec] | None:
        if value is None:
            return None
        return _check_windows(value, info.data.get("intensity"), "the channel's intensity")


def _channel_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A channel entry with ``intensity`` (by its name: CT windowed, others z-scored) and ``windows`` filled."""
    intensity = data.get("intensity")
    if intensity is None:
        intensity = "ct_window" if str(data.get("name", "")).upper() == "CT" else "zscore"
    windows = data.get("windows")
    if windows is None and intensity == "ct_window":
        windows = list(_default_windows())
    return {**data, "intensity": intensity, "windows": windows}


def _check_windows(value: list[WindowSpec], intensity: str | None, where: str) -> list[WindowSpec]:
    """``windows`` is not empty, names presets only, and goes with ct_window."""
    if not value:
        raise ValueError("needs at least one window")
    unknown = [w for w in value if isinstance(w, str) and w not in WINDOW_PRESETS]
    if unknown:
        raise ValueError(f"unknown window preset {unknown[0]!r}; choose from {sorted(WINDOW_PRESETS)} "
                         "or give {center_hu, width_hu}")
    if intensity is not None and intensity != "ct_window":
        raise ValueError(f"given, but {where} is {intensity!r}; windows apply only with intensity "
                         "ct_window (leave one of the two out)")
    return value



class DataConfig(Strict):
    """Where the data is and how a sample is prepared."""

    kind: Literal["images2d", "volumes3d", "slices2d"] = Field(
        "images2d",
        description="images2d: image/mask file pairs; volumes3d: CT/MR volumes; slices2d: 2D model on volume slices.",
    )
    root: Path = Field(description="Dataset folder (relative paths resolve against the YAML file's folder; given "
                       "with --set, against the current folder).")
    images_dir: str = Field("images", description="Sub-folder of root with the images.")
    masks_dir: str = Field("masks", description="Sub-folder of root with the masks / label maps.")
    pairing: Literal["same_stem", "suffix", "replace", "list"] = Field(
        "same_stem", description="How a mask is found for an image."
    )
    mask_suffix: str = Field("_mask", description="For pairing=suffix: mask stem = image stem + suffix.")
    replace: tuple[str, str] = Field(
        ("Slice", "Labels_slice"), description="For pairing=replace: token in the image name -> token in the mask name."
    )
    pair_list: Path | None = Field(None, description="For pairing=list: file with 'image,mask' lines.")
    strict: StrictBool = Field(
        True, description="Refuse images without mask, masks without image and bad pair-list lines "
        "(false: skip them with a warning)."
    )
    color: Literal["rgb", "gray"] = Field("rgb", description="2D images: read as RGB (3 channels) or gray (1).")
    image_size: tuple[PositiveInt, PositiveInt] = Field(
        (256, 256), description="2D: images and masks are resized to (height, width) for training."
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of cases held out for validation.")
    seed: int = Field(0, description="Seed of the train/val split.")
    train_list: Path | None = Field(None, description="File with training case ids (one per line).")
    val_list: Path | None = Field(None, description="File with validation case ids (one per line).")
    folds: int | None = Field(
        None, ge=2, description="Cross-validation: split the cases into this many folds (seeded by data.seed); "
        "data.fold (or medseg train --fold) picks the validation fold. Replaces val_fraction."
    )
    fold: int | None = Field(None, ge=0, description="The validation fold (0 .. data.folds - 1).")
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: bool = Field(
        True, description="images2d: keep decoded, resized samples in memory. volumes3d/slices2d: keep preprocessed "
        "volumes on disk in data.cache_dir (built once per preprocessing setting, memory-mapped by training, "
        "medseg preprocess builds it ahead); false: read and preprocess every volume into memory at each start.")
    cache_dir: Path | None = Field(
        None, description="Folder of the preprocessed volume cache. Left out: $MEDSEG_CACHE_DIR, else "
        "$XDG_CACHE_HOME/medseg/preprocessed, else ~/.cache/medseg/preprocessed (outside the data folder, which "
        "medseg never writes to). Safe to delete at any time. A relative path resolves against the YAML file's folder, "
        "or against the current folder when given with --set (as for data.root).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    # intensity (2D images and volumes)
    intensity: Literal["ct_window", "zscore", "scale", "minmax"] = Field(
        "ct_window",
        description="How stored values become network input. ct_window: data.windows in HU, stacked as channels; "
        "zscore: mean 0, std 1 per volume or image (MR); images2d only: scale (by bit depth: 8-bit /255, 16-bit "
        "/65535, float as stored and within 0..1), minmax (each image's min..max to 0..1). Left out: ct_window for "
        "volumes3d/slices2d; for images2d ct_window when data.windows is given, else scale.",
    )
    intensity_offset: float = Field(
        0.0,
        description="images2d with ct_window: HU = stored value + this, e.g. -32768 for uint16 PNG/TIFF holding "
        "HU + 32768, -1024 for HU + 1024; 0 for signed integer or float TIFF in HU.",
    )
    # volumes
    windows: list[WindowSpec] | None = Field(
        None,
        description="CT windows (preset names or {center_hu, width_hu}); several become stacked channels. Only with "
        "intensity ct_window, where left out means ['soft_tissue'].",
    )
    spacing_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        (1.5, 1.5, 1.5), description="Volumes are resampled to this voxel spacing (None keeps the native spacing)."
    )
    orientation: str = Field("RAS", description="Canonical axis orientation volumes are turned into.")
    patch_size: tuple[PositiveInt, ...] = Field(
        (96, 96, 96), description="Training patch size in voxels (3D) or pixels (slices2d: first two)."
    )
    samples_per_volume: PositiveInt = Field(4, description="Random patches drawn per volume per epoch.")
    foreground_fraction: float = Field(0.67, ge=0, le=1, description="Share of patches centred on foreground.")
    slice_axis: Literal["axial", "sagittal", "coronal"] = Field("axial", description="slices2d: slicing axis.")
    channels: list[ChannelConfig] | None = Field(
        None, min_length=1,
        description="Volumes with several co-registered input files per case, nnU-Net style "
        "(imagesTr/case_0000.nii.gz, case_0001.nii.gz ... with labelsTr/case.nii.gz): one entry per file, in "
        "channel order, each {name, intensity, windows} (intensity left out: ct_window for a channel named CT, else "
        "zscore). The network takes one input channel per zscore channel and one per window of a ct_window "
        "channel. data.intensity and data.windows then repeat the first channel's. Left out: one file per case.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_intensity(cls, data: Any) -> Any:
        """Fill ``intensity`` and ``windows`` when left out (a resolved config then states both)."""
        if not isinstance(data, dict):
            return data
        intensity, windows = data.get("intensity"), data.get("windows")
        channels = data.get("channels")
        if isinstance(channels, list) and channels and intensity is None and windows is None:
            first = channels[0].model_dump() if isinstance(channels[0], ChannelConfig) else channels[0]
            if isinstance(first, dict):  # the first channel's, with ChannelConfig's defaults
                filled = _channel_defaults(first)
                ct = filled.get("intensity") == "ct_window"
                return {**data, "intensity": filled.get("intensity"), "windows": filled.get("windows") if ct else None}
        if intensity is None:
            is_image = data.get("kind", "images2d") == "images2d"
            intensity = "scale" if is_image and windows is None else "ct_window"
        if windows is None and intensity == "ct_window":
            windows = list(_default_windows())
        return {**data, "intensity": intensity, "windows": windows}

    @field_validator("intensity")
    @classmethod
    def _intensity_fits_kind(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind != "images2d" and value in ("scale", "minmax"):
            raise ValueError(f"{value!r} is for images2d; volumes take ct_window or zscore")
        if kind == "images2d" and value == "ct_window" and info.data.get("color") != "gray":
            raise ValueError("CT windows on 2D images (data.windows, stacked as channels) need 16-bit or float gray "
                             "images: set data.color: gray")
        return value

    @field_validator("intensity_offset")
    @classmethod
    def _offset_fits_intensity(cls, value: float, info: ValidationInfo) -> float:
        if value != 0 and (info.data.get("kind") != "images2d" or info.data.get("intensity") != "ct_window"):
            raise ValueError(f"got {value:g}, but it applies to images2d with CT windows only (volume files carry "
                             "their own rescale to HU)")
        return value

    @field_validator("augment")
    @classmethod
    def _crop_for_images(cls, value: AugmentConfig, info: ValidationInfo) -> AugmentConfig:
        if value.crop_probability > 0 and info.data.get("kind", "images2d") != "images2d":
            raise ValueError("crop_probability: random crops are for images2d; volume patches (volumes3d, slices2d) "
                             "are random crops already (data.patch_size)")
        colour = [name for name in ("saturation", "hue") if getattr(value, name) > 0]
        kind, color = info.data.get("kind", "images2d"), info.data.get("color", "rgb")
        if colour and (kind != "images2d" or color != "rgb"):
            found = f"data.kind {kind}" if kind != "images2d" else f"data.color {color}"
            raise ValueError(f"{' and '.join(colour)}: colour changes are for RGB images (data.kind: images2d, "
                             f"data.color: rgb); got {found}")
        return value

    @field_validator("windows")
    @classmethod
    def _windows_not_empty(cls, value: list[WindowSpec] | None, info: ValidationInfo) -> list[WindowSpec] | None:
        if value is None:
            return None
        return _check_windows(value, info.data.get("intensity"), "data.intensity")

    @field_validator("channels")
    @classmethod
    def _channels_fit(cls, value: list[ChannelConfig] | None, info: ValidationInfo) -> list[ChannelConfig] | None:
        if value is None:
            return None
        if info.data.get("kind", "images2d") == "images2d":
            raise ValueError("several input channels (case_0000, case_0001 ...) are for volumes; images2d takes "
                             "data.color (rgb or gray) instead")
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        first = value[0]
        if info.data.get("intensity") != first.intensity or (
                first.intensity == "ct_window" and info.data.get("windows") != first.windows):
            raise ValueError("data.intensity and data.windows are set per channel with data.channels; leave them out "
                             "(they then repeat the first channel's)")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation_code(cls, value: str) -> str:
        value = value.upper()
        axes = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
        if len(value) != 3 or any(c not in axes for c in value) or len({axes[c] for c in value}) != 3:
            raise ValueError(f"must be a 3-letter axis code such as 'RAS' or 'LPS', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_folds(self) -> DataConfig:
        if self.fold is not None and self.folds is None:
            raise ValueError("fold: set, but data.folds is not; set data.folds (e.g. 5) too")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"fold: {self.fold} is not a fold of data.folds {self.folds}; allowed 0.."
                             f"{self.folds - 1}")
        if self.folds is not None and (self.train_list is not None or self.val_list is not None):
            raise ValueError("folds: data.folds and data.train_list / data.val_list both choose the split; keep one")
        return self

