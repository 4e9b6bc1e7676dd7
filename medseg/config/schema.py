"""The experiment configuration: pydantic models validated from YAML.

Every section forbids unknown keys, so a typo is reported at load time with its dotted key path.
Defaults live here and nowhere else; ``medseg config show CONFIG`` prints them resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from medseg.config.networks import ModelConfig as ModelConfig  # re-exported: planning/ imports it from here
from medseg.config.networks import NetworkConfig, default_network_name, size_problem
from medseg.config.strict import Strict

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]

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


class LabelClassConfig(Strict):
    """One output class and the source gray values that belong to it."""

    name: str = Field(min_length=1, description="Class name, e.g. 'polyp' or 'L1'.")
    values: list[int] = Field(
        min_length=1,
        description="Source gray values of this class; the first one is written back on output.",
    )


class LabelsConfig(Strict):
    """Gray-value label mapping: mask values -> classes 0..N-1 and back."""

    classes: list[LabelClassConfig] | None = Field(
        None,
        description="Ordered classes (background first). Also accepts a mapping {gray_value: name}. "
        "Left empty, the values are discovered from the training masks.",
    )
    tolerance: int = Field(
        0,
        ge=0,
        le=127,
        description="Mask values within this many gray levels of a class value snap to it (JPEG masks).",
    )
    unlisted: Literal["error", "background"] = Field(
        "error",
        description="Mask values in no class (beyond the tolerance): an error naming the file, or background "
        "(e.g. organs in a full TotalSegmentator label map when training vertebrae).",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _mapping_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if any(isinstance(x, bool) or not isinstance(x, (int, str)) for x in value):
                raise ValueError(f"gray values must be integers, got {sorted(map(repr, value))}")
            if any(not isinstance(x, (str, int)) or isinstance(x, bool) for x in value.values()):
                raise ValueError(f"class names must be text, got {list(value.values())}")
            return [{"name": str(name), "values": [key]} for key, name in value.items()]
        return value

    @model_validator(mode="after")
    def _unique(self) -> LabelsConfig:
        if self.classes is None:
            return self
        if len(self.classes) < 2:
            raise ValueError(f"needs at least 2 classes (background + one), got {len(self.classes)}")
        seen: dict[int, str] = {}
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        for c in self.classes:
            for v in c.values:
                if v in seen:
                    raise ValueError(f"gray value {v} is listed for both {seen[v]!r} and {c.name!r}")
                seen[v] = c.name
        return self


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


class LossConfig(Strict):
    """Loss by name (MONAI's implementations)."""

    name: Literal["dice", "focal", "dice_focal", "dice_ce"] = Field("dice_ce", description="Loss function.")
    include_background: bool = Field(True, description="Count the background class in the Dice term.")
    class_weights: list[float] | None = Field(None, description="Per-class weights (CE/focal terms).")
    lambda_dice: float = Field(1.0, ge=0, description="Weight of the Dice term in combined losses.")
    lambda_other: float = Field(1.0, ge=0, description="Weight of the CE/focal term in combined losses.")
    focal_gamma: float = Field(2.0, ge=0, description="Focal loss gamma.")

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(w < 0 for w in value):
            raise ValueError(f"class weights must be >= 0, got {value}")
        if value and not any(value):
            raise ValueError(f"class weights must not all be 0 (every class would count for nothing), got {value}")
        return value


class SchedulerConfig(Strict):
    """Learning-rate schedule."""

    name: Literal["none", "cosine", "plateau"] = Field("cosine", description="Schedule.")
    warmup_epochs: int = Field(0, ge=0, description="cosine: linear warm-up epochs.")
    final_lr_fraction: float = Field(0.01, ge=0, le=1, description="cosine: final lr as a fraction of train.lr.")
    patience: int = Field(5, ge=1, description="plateau: epochs without improvement before reducing.")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr multiplier.")


class TrainConfig(Strict):
    """Optimisation, validation and checkpointing."""

    max_epochs: PositiveInt = Field(50, description="Epochs to train.")
    batch_size: PositiveInt = Field(8, description="Samples per optimizer step over all processes (global batch).")
    lr: float = Field(1e-3, gt=0, description="Initial learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="Weight decay.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="Optimizer.")
    momentum: float = Field(0.99, ge=0, lt=1, description="sgd: momentum (Nesterov).")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without improvement (None: never)."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="Improvements of the best metric smaller than this count as none for early stopping."
    )
    grad_clip: float | None = Field(12.0, gt=0, description="Clip the gradient norm to this value (None: off).")
    ema: float | None = Field(
        None, gt=0, lt=1, description="Exponential moving average of the weights: its decay, strictly between 0 and 1 "
        "(e.g. 0.999), warmed up as min(ema, (1 + t) / (10 + t)) at optimizer step t; validation, best.pt and "
        "prediction use the averaged weights (None: off)."
    )
    amp: bool = Field(True, description="Mixed precision: fp16 with loss scaling on CUDA, bf16 on a CPU with native "
                      "bf16 (AVX512-BF16/AMX); other CPUs train in fp32 (logged).")
    channels_last: bool = Field(True, description="Weights and batches in channels-last layout (faster convolutions "
                                "with bf16/fp16 on CPU and GPU).")
    compile: bool = Field(False, description="Run training steps through torch.compile (inductor; compiling takes "
                          "minutes on a CPU, pays off in long runs).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    seed: int = Field(0, description="Seed for weights, sampling and augmentation.")
    deterministic: bool = Field(True, description="Deterministic algorithms where PyTorch has them.")
    val_every: PositiveInt = Field(1, description="Validate every N epochs (and after the last).")
    best_metric: Literal["dice", "iou", "loss"] = Field("dice", description="Metric that picks the best checkpoint.")
    steps_per_epoch: PositiveInt | None = Field(None, description="Cap on steps per epoch (None: whole set).")
    tensorboard: bool = Field(False, description="Also write TensorBoard logs to the run folder.")
    tensorboard_images_every: PositiveInt | None = Field(
        None, description="With train.tensorboard: every N epochs, the first validation input, truth and "
        "prediction as TensorBoard images (None: no images)."
    )
    preview_samples: int = Field(4, ge=0, le=16, description="Training samples drawn in preview.png.")
    grad_accumulation: PositiveInt = Field(
        1, description="Micro-batches per optimizer step: train.batch_size is split over processes x this."
    )
    sync_batchnorm: bool = Field(False, description="Several CUDA processes: batch-norm statistics over all of them.")
    distributed_timeout_s: PositiveInt = Field(
        600, description="Several processes: longest wait for the others before stopping with an error."
    )

    @field_validator("ema", mode="wrap")
    @classmethod
    def _ema_in_range(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One message for a decay out of range, whichever bound it crosses."""
        try:
            return handler(value)
        except ValidationError as err:
            if any(e["type"] in ("greater_than", "less_than") for e in err.errors()):
                raise ValueError("expected a decay strictly between 0 and 1 (e.g. 0.999), or null for no EMA") from None
            raise


class InferConfig(Strict):
    """Prediction settings, stored in the checkpoint and overridable at predict time."""

    roi_size: tuple[PositiveInt, ...] | None = Field(
        None, description="Sliding-window size; default: data.patch_size (3D) or data.image_size (2D)."
    )
    overlap: float = Field(0.25, ge=0, lt=1, description="Window overlap fraction.")
    sw_batch_size: PositiveInt = Field(4, description="Windows per forward pass.")
    blend: Literal["gaussian", "constant"] = Field("gaussian", description="How overlapping windows are blended.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Inference precision.")
    backend: Literal["auto", "eager", "channels_last", "compile"] = Field(
        "auto", description="How the forward pass runs: auto (a cached, measured probe picks eager or channels-last "
        "layout), eager, channels_last, or compile (channels-last + torch.compile; compiling takes tens of seconds)."
    )
    tta: bool = Field(False, description="Flip test-time augmentation.")
    largest_component: bool = Field(False, description="Keep only the largest connected component per class.")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Two-class models: foreground where p(foreground) >= threshold, strictly "
        "between 0 and 1 (None: the most probable class)."
    )


class ExperimentConfig(Strict):
    """A whole experiment: data, model, loss, training and inference settings."""

    version: Literal[1] = Field(1, description="Config format version.")
    data: DataConfig
    model: NetworkConfig = Field(default_factory=ModelConfig, description="Network by model.name (unet when omitted).")
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        wants_3d = self.data.kind == "volumes3d"
        if wants_3d and 3 not in self.model.dims_allowed:
            raise ValueError(f"model.name: {self.model.name!r} is 2D only; data.kind 'volumes3d' needs a 3D network")
        if wants_3d and self.model.spatial_dims != 3:
            raise ValueError("model.spatial_dims must be 3 when data.kind is 'volumes3d'")
        if not wants_3d and self.model.spatial_dims != 2:
            raise ValueError(f"model.spatial_dims must be 2 when data.kind is {self.data.kind!r}")
        weights = self.loss.class_weights
        labels = self.data.labels.classes
        if weights is not None and labels is not None and len(weights) != len(labels):
            raise ValueError(
                f"loss.class_weights has {len(weights)} entries but data.labels.classes has {len(labels)}"
            )
        self._check_sizes()
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_network_name(value)

    def _check_sizes(self) -> None:
        """Training sizes are multiples of the network's divisor; they and ``infer.roi_size`` are above it where
        the network needs more than one voxel at its deepest level. (The sliding window rounds a roi up to a
        multiple itself, and checkpoints stored such rois before this check.)"""
        dims = self.model.spatial_dims
        sizes = {"data.image_size": tuple(self.data.image_size)} if self.data.kind == "images2d" else {
            "data.patch_size": tuple(self.data.patch_size)[:dims]}
        if self.infer.roi_size is not None:
            roi = tuple(self.infer.roi_size)
            sizes["infer.roi_size"] = roi * dims if len(roi) == 1 else roi
        for key, size in sizes.items():
            problem = size_problem(key, size, self.model.divisor, self.model.needs_above_divisor,
                                   multiple=key != "infer.roi_size")
            if problem:
                raise ValueError(f"{problem} (model.name {self.model.name!r})")
