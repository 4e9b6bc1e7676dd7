"""medseg: medical-image segmentation on MONAI and PyTorch.

The public API is re-exported here and imported lazily, so ``import medseg`` (and ``medseg --help``)
stay fast until a piece is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # config
    "load_config": "medseg.config.loading",
    "validate_config": "medseg.config.loading",
    "ExperimentConfig": "medseg.config.schema",
    # errors
    "MedsegError": "medseg.errors",
    "ConfigError": "medseg.errors",
    "DataError": "medseg.errors",
    "CheckpointError": "medseg.errors",
    "OutputExistsError": "medseg.errors",
    # data
    "CTWindow": "medseg.data.transforms",
    "CTWindowd": "medseg.data.transforms",
    "WINDOW_PRESETS": "medseg.data.transforms",
    "ct_window": "medseg.data.transforms",
    "LabelMap": "medseg.data.labels",
    "MapLabels": "medseg.data.label_transforms",
    "MapLabelsd": "medseg.data.label_transforms",
    "InverseMapLabels": "medseg.data.label_transforms",
    "InverseMapLabelsd": "medseg.data.label_transforms",
    "discover_label_values": "medseg.data.label_discovery",
    "make_polyp_dataset": "medseg.data.synthetic.polyp",
    "make_spine_phantom": "medseg.data.synthetic.spine",
    "make_spine_dataset": "medseg.data.synthetic.spine",
    # models and losses
    "build_model": "medseg.models.factory",
    "build_loss": "medseg.losses.factory",
    # engine
    "train": "medseg.training.loop",
    "TrainResult": "medseg.training.loop",
    "evaluate": "medseg.evaluation.evaluate",
    "compute_case_metrics": "medseg.metrics.case_metrics",
    "Predictor": "medseg.prediction.predictor",
    "predict_paths": "medseg.prediction.batch",
    "sliding_window_predict": "medseg.sliding_window.predict",
    # io
    "Volume": "medseg.io.volume",
    "read_volume": "medseg.io.volume_io",
    "write_volume": "medseg.io.volume_io",
    "write_label_map": "medseg.io.volume_io",
    "list_series": "medseg.io.dicom",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

