"""The experiment configuration: pydantic models validated from YAML.

Every section forbids unknown keys, so a typo is reported at load time with its dotted key path.
Defaults live here and nowhere else; ``medseg config show CONFIG`` prints them resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

PositiveInt = Annotated[int, Field(ge=1)]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
            return [{"name": str(name), "values": [int(key)]} for key, name in value.items()]
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


class DataConfig(Strict):
    """Where the data is and how a sample is prepared."""

    kind: Literal["images2d", "volumes3d", "slices2d"] = Field(
        "images2d",
        description="images2d: image/mask file pairs; volumes3d: CT/MR volumes; slices2d: 2D model on volume slices.",
    )
    root: Path = Field(description="Dataset folder (relative paths resolve against the YAML file's folder).")
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
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: bool = Field(True, description="Keep decoded, resized samples in memory after the first epoch.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    # volumes
    windows: list[WindowSpec] = Field(
        default_factory=_default_windows,
        description="CT windows (preset names or {center_hu, width_hu}); several become stacked channels.",
    )
    intensity: Literal["ct_window", "zscore"] = Field(
        "ct_window", description="Volume normalisation: CT windows in HU, or per-volume z-score (MR)."
    )
    spacing_mm: tuple[float, float, float] | None = Field(
        (1.5, 1.5, 1.5), description="Volumes are resampled to this voxel spacing (None keeps the native spacing)."
    )
    orientation: str = Field("RAS", description="Canonical axis orientation volumes are turned into.")
    patch_size: tuple[PositiveInt, ...] = Field(
        (96, 96, 96), description="Training patch size in voxels (3D) or pixels (slices2d: first two)."
    )
    samples_per_volume: PositiveInt = Field(4, description="Random patches drawn per volume per epoch.")
    foreground_fraction: float = Field(0.67, ge=0, le=1, description="Share of patches centred on foreground.")
    slice_axis: Literal["axial", "sagittal", "coronal"] = Field("axial", description="slices2d: slicing axis.")

    @field_validator("windows")
    @classmethod
    def _windows_not_empty(cls, value: list[WindowSpec]) -> list[WindowSpec]:
        if not value:
            raise ValueError("needs at least one window")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation_code(cls, value: str) -> str:
        value = value.upper()
        axes = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
        if len(value) != 3 or any(c not in axes for c in value) or len({axes[c] for c in value}) != 3:
            raise ValueError(f"must be a 3-letter axis code such as 'RAS' or 'LPS', got {value!r}")
        return value


class ModelConfig(Strict):
    """Network architecture (MONAI's UNet)."""

    name: Literal["unet"] = Field("unet", description="Model registry name.")
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images and slices, 3 for volumes.")
    in_channels: PositiveInt | None = Field(None, description="Input channels; default: from the data.")
    out_channels: int | None = Field(None, ge=2, description="Classes incl. background; default: from labels.")
    channels: tuple[PositiveInt, ...] = Field((16, 32, 64, 128, 256), description="Features per level.")
    strides: tuple[PositiveInt, ...] = Field((2, 2, 2, 2), description="Down-sampling per level.")
    num_res_units: int = Field(2, ge=0, description="Residual units per block.")
    norm: Literal["batch", "instance", "group"] = Field("batch", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")

    @model_validator(mode="after")
    def _check_strides(self) -> ModelConfig:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {list(self.channels)}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        return self

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (product of the strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


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
    batch_size: PositiveInt = Field(8, description="Samples per step.")
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
    preview_samples: int = Field(4, ge=0, le=16, description="Training samples drawn in preview.png.")


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


class ExperimentConfig(Strict):
    """A whole experiment: data, model, loss, training and inference settings."""

    version: Literal[1] = Field(1, description="Config format version.")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        wants_3d = self.data.kind == "volumes3d"
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
        self._check_bottleneck()
        return self

    def _check_bottleneck(self) -> None:
        """Instance norm needs more than one voxel per channel at the deepest level (PyTorch refuses one)."""
        if self.model.norm != "instance":
            return
        div = self.model.divisor
        sizes = {"data.image_size": tuple(self.data.image_size)} if self.data.kind == "images2d" else {
            "data.patch_size": tuple(self.data.patch_size)[: self.model.spatial_dims]}
        if self.infer.roi_size is not None:
            sizes["infer.roi_size"] = tuple(self.infer.roi_size)
        for key, size in sizes.items():
            if any(n <= div for n in size):
                fixed = [max(n, 2 * div) for n in size]
                raise ValueError(
                    f"{key}: {list(size)} leaves one voxel per channel after the strides (their product is {div}), "
                    f"which model.norm 'instance' cannot normalise; use sizes above {div}, e.g. {fixed}"
                )
