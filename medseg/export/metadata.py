"""The document every export carries: labels, channels, preprocessing, window size, what the network needs.

Its format is described (and read back) in :mod:`medseg.prediction.artifact`; this module writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import medseg
from medseg.config.kinds import DataKind
from medseg.config.loading import config_to_dict
from medseg.prediction.artifact import MODEL_FORMAT, MODEL_FORMAT_VERSION
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.network import roi_for
from medseg.sliding_window.plan import network_divisor, network_first_width, window_dependent_layers

__all__ = ["export_roi", "input_channels", "model_metadata"]

_AXES = {2: "H, W", 3: "X, Y, Z"}


def model_metadata(loaded: LoadedModel, *, export: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe document that describes ``loaded`` to whoever runs its exported network.

    Args:
        loaded: The model as loaded from its checkpoint (its network in eval mode).
        export: What the export was (``{"format": "onnx", "opset": 18, ...}``), stored under ``"export"``.

    Example:
        >>> from medseg.config import validate_config
        >>> from medseg.data.labels import LabelMap
        >>> from medseg.models.factory import build_model
        >>> import torch
        >>> cfg = validate_config({"data": {"kind": "images2d", "root": "x", "image_size": [32, 32]},
        ...                        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0}})
        >>> net = build_model(cfg.model, in_channels=3, out_channels=2).eval()
        >>> loaded = LoadedModel(net, cfg, LabelMap.from_mapping({0: "bg", 255: "polyp"}),
        ...                      {"kind": "images2d", "image_size": [32, 32], "color": "rgb", "scale": 1 / 255},
        ...                      cfg.infer, torch.device("cpu"), DataKind.IMAGES2D, in_channels=3)
        >>> meta = model_metadata(loaded, export={"format": "onnx"})
        >>> meta["roi_size"], meta["network"]["divisor"], meta["input"]["channels"]
        ([32, 32], [2, 2], ['red', 'green', 'blue'])
    """
    dims = loaded.kind.spatial_dims
    network = loaded.model
    divisor = network_divisor(network, dims)
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medseg_version": medseg.__version__,
        "kind": loaded.kind.value,
        "labels": loaded.labels.to_dict(),
        "preprocessing": dict(loaded.preprocessing),
        "infer": loaded.infer.model_dump(mode="json"),
        "roi_size": list(export_roi(loaded)),
        "input": {"name": "image", "layout": f"(B, C, {_AXES[dims]})", "channels": input_channels(loaded)},
        "output": {"name": "logits", "layout": f"(B, K, {_AXES[dims]})", "classes": loaded.labels.names},
        "network": {
            "in_channels": loaded.in_channels,
            "out_channels": loaded.labels.num_classes,
            "divisor": [int(d) for d in divisor],
            "first_width": network_first_width(network),
            "window_dependent": window_dependent_layers(network),
        },
        "config": config_to_dict(loaded.config),
        "source": loaded.source,
        "export": dict(export),
    }


def input_channels(loaded: LoadedModel) -> list[str]:
    """What each input channel holds, in order (e.g. ``["CT window 400/1800 HU -> 0..1"]``)."""
    pre = loaded.preprocessing
    if loaded.kind is DataKind.IMAGES2D and pre.get("intensity", "scale") != "ct_window":
        return ["red", "green", "blue"] if pre.get("color", "rgb") == "rgb" else ["gray"]
    if pre.get("channels"):  # several input files per case: each file's channels, in order
        return [f"{c['name']} (<case>_{i:04d}): {text}" for i, c in enumerate(pre["channels"])
                for text in _normalisation(c)]
    return _normalisation(pre)


def _normalisation(pre: Mapping[str, Any]) -> list[str]:
    """The input channels one volume gives: its z-score, or one per CT window."""
    if pre.get("intensity", "ct_window") == "zscore":
        return ["intensity, z-scored over the resampled volume"]
    return [f"CT window {_num(c)}/{_num(w)} HU -> 0..1" for c, w in pre.get("windows", [])]


def export_roi(loaded: LoadedModel) -> tuple[int, ...]:
    """The window the network runs on: the training image size (images2d) or the sliding-window roi."""
    if loaded.kind is DataKind.IMAGES2D:
        return tuple(int(n) for n in loaded.preprocessing["image_size"])
    return roi_for(loaded.preprocessing, loaded.infer)


def _num(value: float) -> str:
    return f"{value:g}"
