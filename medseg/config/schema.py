"""The experiment configuration: pydantic models validated from YAML.

Every section forbids unknown keys, so a typo is reported at load time with its dotted key path.
Defaults live in the section modules and nowhere else; ``medseg config show CONFIG`` prints them resolved.
This module holds the whole (:class:`ExperimentConfig`) and re-exports its sections:
:mod:`medseg.config.data_section` (``data``), :mod:`medseg.config.data_labels` (``data.labels``),
:mod:`medseg.config.data_augment` (``data.augment``), :mod:`medseg.config.networks` (``model``) and
:mod:`medseg.config.train_sections` (``loss``, ``train``, ``train.scheduler``, ``infer``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

# The sections, re-exported: the rest of medseg imports them from here.
from medseg.config.data_augment import AugmentConfig as AugmentConfig
from medseg.config.data_labels import LabelClassConfig as LabelClassConfig
from medseg.config.data_labels import LabelsConfig as LabelsConfig
from medseg.config.data_section import WINDOW_PRESETS as WINDOW_PRESETS
from medseg.config.data_section import ChannelConfig as ChannelConfig
from medseg.config.data_section import DataConfig as DataConfig
from medseg.config.data_section import WindowConfig as WindowConfig
from medseg.config.data_section import WindowSpec as WindowSpec
from medseg.config.networks import ModelConfig as ModelConfig
from medseg.config.networks import NetworkConfig, default_network_name, size_problem
from medseg.config.strict import PositiveFloat as PositiveFloat
from medseg.config.strict import PositiveInt as PositiveInt
from medseg.config.strict import Strict
from medseg.config.train_sections import InferConfig as InferConfig
from medseg.config.train_sections import LossConfig as LossConfig
from medseg.config.train_sections import SchedulerConfig as SchedulerConfig
from medseg.config.train_sections import TrainConfig as TrainConfig


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
