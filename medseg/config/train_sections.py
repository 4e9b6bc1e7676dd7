"""The ``loss``, ``train`` (with its ``scheduler``) and ``infer`` sections: how a network is trained and run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from medseg.config.strict import PositiveInt, Strict

__all__ = ["InferConfig", "LossConfig", "SchedulerConfig", "TrainConfig"]


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

