"""medseg: medical-image segmentation on MONAI and PyTorch.

The public API is re-exported here and imported lazily, so ``import medseg`` (and ``medseg --help``)
stay fast until a piece is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "plan_dataset": "medseg.planning.planner",
    "compute_case_metrics": "medseg.metrics.case_metrics",
    "Predictor": "medseg.prediction.predictor",
    "Ensemble": "medseg.prediction.ensemble",
    "predict_paths": "medseg.prediction.batch",
    "structure_statistics": "medseg.prediction.statistics",
    "sliding_window_predict": "medseg.sliding_window.predict",
    "export_model": "medseg.export.run",
    "ExportReport": "medseg.export.run",
    # io
    "Volume": "medseg.io.volume",
    "read_volume": "medseg.io.volume_io",
    "write_volume": "medseg.io.volume_io",
    "write_label_map": "medseg.io.volume_io",
    "list_series": "medseg.io.dicom",
    # the installation
    "check_environment": "medseg.doctor",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # the names the lazy __getattr__ below returns, for mypy and editors (`X as X`: re-exported)
    from medseg.config.loading import load_config as load_config
    from medseg.config.loading import validate_config as validate_config
    from medseg.config.schema import ExperimentConfig as ExperimentConfig
    from medseg.data.label_discovery import discover_label_values as discover_label_values
    from medseg.data.label_transforms import InverseMapLabels as InverseMapLabels
    from medseg.data.label_transforms import InverseMapLabelsd as InverseMapLabelsd
    from medseg.data.label_transforms import MapLabels as MapLabels
    from medseg.data.label_transforms import MapLabelsd as MapLabelsd
    from medseg.data.labels import LabelMap as LabelMap
    from medseg.data.synthetic.polyp import make_polyp_dataset as make_polyp_dataset
    from medseg.data.synthetic.spine import make_spine_dataset as make_spine_dataset
    from medseg.data.synthetic.spine import make_spine_phantom as make_spine_phantom
    from medseg.data.transforms import WINDOW_PRESETS as WINDOW_PRESETS
    from medseg.data.transforms import CTWindow as CTWindow
    from medseg.data.transforms import CTWindowd as CTWindowd
    from medseg.data.transforms import ct_window as ct_window
    from medseg.doctor import check_environment as check_environment
    from medseg.errors import CheckpointError as CheckpointError
    from medseg.errors import ConfigError as ConfigError
    from medseg.errors import DataError as DataError
    from medseg.errors import MedsegError as MedsegError
    from medseg.errors import OutputExistsError as OutputExistsError
    from medseg.evaluation.evaluate import evaluate as evaluate
    from medseg.export.run import ExportReport as ExportReport
    from medseg.export.run import export_model as export_model
    from medseg.io.dicom import list_series as list_series
    from medseg.io.volume import Volume as Volume
    from medseg.io.volume_io import read_volume as read_volume
    from medseg.io.volume_io import write_label_map as write_label_map
    from medseg.io.volume_io import write_volume as write_volume
    from medseg.losses.factory import build_loss as build_loss
    from medseg.metrics.case_metrics import compute_case_metrics as compute_case_metrics
    from medseg.models.factory import build_model as build_model
    from medseg.planning.planner import plan_dataset as plan_dataset
    from medseg.prediction.batch import predict_paths as predict_paths
    from medseg.prediction.ensemble import Ensemble as Ensemble
    from medseg.prediction.predictor import Predictor as Predictor
    from medseg.prediction.statistics import structure_statistics as structure_statistics
    from medseg.sliding_window.predict import sliding_window_predict as sliding_window_predict
    from medseg.training.loop import TrainResult as TrainResult
    from medseg.training.loop import train as train


if not TYPE_CHECKING:  # hidden from mypy, so that a misspelled name (medseg.Volumee) is an error there too

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'medseg' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(__all__)

