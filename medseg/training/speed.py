"""How a training step runs fast: mixed precision, memory layout, compilation and cuDNN autotuning.

``train.amp`` gives fp16 autocast with loss scaling (GradScaler) on CUDA and bf16 autocast on a CPU with
native bf16 instructions (AVX512-BF16 or AMX; bf16 keeps fp32's exponent range, so no loss scaling); on other
CPUs training stays fp32, which is logged. ``train.channels_last`` keeps weights and batches in channels-last
layout (oneDNN's and cuDNN's fastest convolution kernels; strided 1x1 convolutions then run as subsampling + a
stride-1 convolution, around a oneDNN heap overflow: :mod:`medseg.training.strided_convs`); ``train.compile``
wraps the model in ``torch.compile`` for the training steps (validation and checkpoints use the plain model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medseg.config.schema import TrainConfig
from medseg.sliding_window.plan import cpu_has_native_bf16
from medseg.training.strided_convs import subsample_strided_1x1_convs

__all__ = ["TrainingSpeed", "resolve_training_speed", "to_memory_format"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSpeed:
    """The speed settings one training run uses.

    Attributes:
        amp_dtype: Autocast dtype of the forward pass and loss, or None for fp32.
        scale_loss: Loss scaling with a GradScaler (fp16 on CUDA).
        memory_format: Layout of weights and batches (``torch.contiguous_format`` when channels-last is off).
        compile: Run the training steps through ``torch.compile``.
    """

    amp_dtype: torch.dtype | None = None
    scale_loss: bool = False
    memory_format: torch.memory_format = torch.contiguous_format
    compile: bool = False

    def describe(self) -> str:
        """One line for the log, e.g. ``"bf16 autocast, channels_last_3d"``."""
        dtype = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + loss scaling"}
        parts = [dtype.get(self.amp_dtype, str(self.amp_dtype)), str(self.memory_format).replace("torch.", "")]
        return ", ".join(parts + (["torch.compile"] if self.compile else []))

    def batch(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` in the run's memory layout (unchanged for contiguous layout or a layout that does not fit)."""
        if self.memory_format is torch.contiguous_format or image.ndim != _ndim(self.memory_format):
            return image
        return image.contiguous(memory_format=self.memory_format)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put ``model`` in the run's layout (in place, :func:`to_memory_format`); returns what the training steps
        call."""
        to_memory_format(model, self.memory_format)
        return torch.compile(model) if self.compile else model  # type: ignore[return-value]


def to_memory_format(model: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Put ``model``'s weights in ``memory_format`` for training (in place; nothing for contiguous layout).

    In a channels-last layout the strided 1x1 convolutions also run as subsampling + a stride-1 convolution
    (:func:`~medseg.training.strided_convs.subsample_strided_1x1_convs`): oneDNN's backward pass of a strided 1x1
    convolution on channels-last input with fewer than 16 (AVX512) or 8 (AVX2) input channels per group
    overflows the heap (oneDNN#6035). The change is exact and stays on the model (an instance ``forward`` on
    those layers; parameters, state dict and repr unchanged).
    """
    if memory_format is torch.contiguous_format:
        return
    model.to(memory_format=memory_format)  # type: ignore[call-overload]
    changed = subsample_strided_1x1_convs(model)
    if changed:
        log.info("%d strided 1x1 convolution(s) run as subsampling + stride 1 in channels-last training "
                 "(around oneDNN#6035, a heap overflow in their backward pass)", changed)


def _ndim(memory_format: torch.memory_format) -> int:
    return 5 if memory_format is torch.channels_last_3d else 4


#: Samples smaller than this (voxels per channel) train in fp32 on CPU even with ``train.amp``: measured on this
#: project's 2-core CPU, a 64x64 UNet trained 26.9 s in bf16 against 17.9 s in fp32 (casts cost more than they save),
#: while 192x192 Kvasir batches train several times faster in bf16 (docs/benchmarks.md).
CPU_BF16_MIN_VOXELS = {2: 128 * 128, 3: 48**3}


def resolve_training_speed(train: TrainConfig, device: torch.device, spatial_dims: int,
                           sample_size: Sequence[int] | None = None) -> TrainingSpeed:
    """The :class:`TrainingSpeed` for ``train`` on ``device`` for a ``spatial_dims`` (2 or 3) network whose
    training samples are ``sample_size`` (image or patch size; bf16 on CPU only from :data:`CPU_BF16_MIN_VOXELS`).

    Example:
        >>> s = resolve_training_speed(TrainConfig(amp=False), torch.device("cpu"), 3)
        >>> s.amp_dtype, s.memory_format
        (None, torch.channels_last_3d)
    """
    amp_dtype: torch.dtype | None = None
    if train.amp and device.type == "cuda":
        amp_dtype = torch.float16
    elif train.amp and device.type == "cpu" and cpu_has_native_bf16():
        size = tuple(sample_size[:spatial_dims]) if sample_size is not None else None
        if size is not None and math.prod(size) < CPU_BF16_MIN_VOXELS[spatial_dims]:
            log.info("training samples of %s voxels are small: fp32 (bf16 pays on CPU from %d voxels)",
                     "x".join(map(str, size)), CPU_BF16_MIN_VOXELS[spatial_dims])
        else:
            amp_dtype = torch.bfloat16
    elif train.amp:
        log.info("train.amp is on but %s has no native bf16 instructions: training in fp32", device)
    layout = torch.contiguous_format
    if train.channels_last:
        layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    if device.type == "cuda" and not train.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN time its kernels once
    return TrainingSpeed(amp_dtype=amp_dtype, scale_loss=amp_dtype is torch.float16, memory_format=layout,
                         compile=train.compile)
