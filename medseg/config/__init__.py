"""Experiment configuration: schema and YAML loading."""

from medseg.config.loading import config_to_dict, dump_config, load_config, save_config, validate_config
from medseg.config.networks import ModelConfig
from medseg.config.schema import (
    AugmentConfig,
    DataConfig,
    ExperimentConfig,
    InferConfig,
    LabelClassConfig,
    LabelsConfig,
    LossConfig,
    SchedulerConfig,
    TrainConfig,
    WindowConfig,
)

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ExperimentConfig",
    "InferConfig",
    "LabelClassConfig",
    "LabelsConfig",
    "LossConfig",
    "ModelConfig",
    "SchedulerConfig",
    "TrainConfig",
    "WindowConfig",
    "config_to_dict",
    "dump_config",
    "load_config",
    "save_config",
    "validate_config",
]
