"""What an exported model carries besides the network: one JSON document, written by ``medseg export``.

The same document goes into every export format (the ONNX model's ``metadata_props["medseg"]``, the
TorchScript archive's ``medseg.json``, the MONAI bundle's ``configs/metadata.json`` under ``"medseg"``), so
an exported network can be used without its checkpoint::

    {"format": "medseg-model", "format_version": 1, "medseg_version": "0.1.0", "kind": "volumes3d",
     "labels": {"classes": [{"name": "background", "values": [0]}, ...]},   # class i -> gray values
     "preprocessing": {"windows": [[400, 1800]], "spacing_mm": [...], "orientation": "RAS", ...},
     "infer": {"overlap": 0.25, "blend": "gaussian", ...}, "roi_size": [96, 96, 96],
     "input": {"name": "image", "layout": "(B, C, X, Y, Z)", "channels": ["CT window 400/1800 HU -> 0..1"]},
     "output": {"name": "logits", "layout": "(B, K, X, Y, Z)", "classes": ["background", ...]},
     "network": {"in_channels": 1, "out_channels": 2, "divisor": [8, 8, 8], "first_width": 16,
                 "window_dependent": []},
     "config": {...the resolved training config...}, "source": "run/checkpoints/best.pt",
     "export": {"format": "onnx", "opset": 18, "torch_version": "2.13.0"}}

:func:`medseg.export.metadata.model_metadata` writes it; :func:`parse_model_metadata` reads it back,
refusing anything malformed with one line naming the file.
"""

from __future__ import annotations

import json
from typing import Any

from medseg.errors import CheckpointError

__all__ = ["METADATA_KEY", "MODEL_FORMAT", "MODEL_FORMAT_VERSION", "parse_model_metadata"]

MODEL_FORMAT = "medseg-model"
MODEL_FORMAT_VERSION = 1
#: Key of the document in an ONNX model's ``metadata_props`` (and stem of the TorchScript extra file).
METADATA_KEY = "medseg"

def parse_model_metadata(text: str | bytes | None, source: str) -> dict[str, Any]:
    """Read and check the document of an exported model.

    Args:
        text: The JSON text (None when the file carries none).
        source: The file, for messages.

    Returns:
        The document, with every entry :class:`~medseg.prediction.loaded.LoadedModel` needs checked.

    Raises:
        CheckpointError: No document, not JSON, another format, a newer format version, or an entry missing
            or of the wrong type.

    Example:
        >>> parse_model_metadata("[]", "m.onnx")
        Traceback (most recent call last):
        medseg.errors.CheckpointError: m.onnx: medseg metadata has format 'list'; expected 'medseg-model'
    """
    if text is None:
        raise CheckpointError(f"{source}: carries no medseg metadata (no {METADATA_KEY!r} entry); export the "
                              "model with 'medseg export' to use it here")
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source}: medseg metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{source}: medseg metadata has format {found!r}; expected {MODEL_FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{source}: medseg metadata format_version {version!r} is not one this medseg reads "
                              f"(1..{MODEL_FORMAT_VERSION}); upgrade medseg")
    for key in ("config", "labels", "preprocessing", "infer", "network"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{source}: medseg metadata entry {key!r} is missing or not an object")
    network = meta["network"]
    for key in ("in_channels", "out_channels", "first_width"):
        value = network.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
            raise CheckpointError(f"{source}: medseg metadata entry network.{key} is {value!r}; expected 1..4096")
    divisor = network.get("divisor")
    if not isinstance(divisor, list) or not divisor or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in divisor):
        raise CheckpointError(f"{source}: medseg metadata entry network.divisor is {divisor!r}; expected a list "
                              "of positive integers")
    if not isinstance(network.get("window_dependent"), list):
        raise CheckpointError(f"{source}: medseg metadata entry network.window_dependent is not a list")
    return meta
