"""Export to ONNX: the network with dynamic batch and spatial axes, the medseg document in ``metadata_props``.

The exporter is PyTorch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, the default
since PyTorch 2.9; the TorchScript-based exporter is deprecated), which needs ``onnx`` and ``onnxscript``.
Opset :data:`OPSET` (18): supported by every ONNX Runtime since 1.14. The file is written to a temporary
name, checked under ONNX Runtime against the PyTorch network (:mod:`medseg.export.checks`), then renamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medseg.atomic import atomic_path
from medseg.errors import DependencyError, ExportError
from medseg.export.checks import check_outputs, example_input, run_reference
from medseg.export.metadata import model_metadata
from medseg.models.outputs import MainOutput
from medseg.prediction.artifact import METADATA_KEY
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.onnx_network import INSTALL_HINT, require_onnxruntime

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx"]

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_SPATIAL_NAMES = {2: ("height", "width"), 3: ("x", "y", "z")}


def export_onnx(loaded: LoadedModel, path: Path, *, check: bool = True) -> dict[str, Any]:
    """Write ``loaded``'s network as an ONNX model with its medseg metadata, atomically.

    Args:
        loaded: A model loaded from a medseg checkpoint (on the CPU).
        path: The ``.onnx`` file to write.
        check: Run the written model under ONNX Runtime on seeded noise of the roi size and compare its
            logits with PyTorch's (:func:`~medseg.export.checks.check_outputs`) before it gets its name.

    Returns:
        ``{"opset": 18, "max_abs_diff": float | None, "check_shape": [...]}``.

    Raises:
        DependencyError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is missing.
        ExportError: The exporter failed, or ONNX Runtime's output differs beyond the tolerance.
    """
    _require_exporter()
    network = MainOutput(loaded.model.to("cpu")).eval()  # the main logits only (no deep-supervision heads)
    dims = loaded.kind.spatial_dims
    names = ("batch", *_SPATIAL_NAMES[dims])
    axes = {0: names[0], **{2 + i: names[1 + i] for i in range(dims)}}
    dynamic = ({axis: torch.export.Dim(name) for axis, name in axes.items()},)
    example = example_input(loaded, batch=2)
    with _quiet_exporter():
        try:
            program = torch.onnx.export(network, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                                        dynamic_shapes=dynamic, verbose=False)
        except Exception as err:  # the exporter raises many types; any failure means no file
            reason = " ".join(str(err).split())[:300]
            raise ExportError(f"{path}: ONNX export of {type(loaded.model).__name__} failed: {reason}") from None
    if program is None:
        raise ExportError(f"{path}: the ONNX exporter returned no program (PyTorch too old? need >= 2.6)")
    export = {"format": "onnx", "opset": OPSET, "torch_version": torch.__version__, "input_name": INPUT_NAME,
              "output_name": OUTPUT_NAME, "dynamic_axes": {str(k): v for k, v in axes.items()}}
    meta = model_metadata(loaded, export=export)
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    result: dict[str, Any] = {"opset": OPSET, "max_abs_diff": None, "check_shape": None}
    with atomic_path(path, suffix=".onnx") as tmp:
        program.save(tmp, external_data=False)
        if check:
            x = example_input(loaded)
            result["max_abs_diff"] = check_outputs(run_reference(loaded, x), run_onnx(tmp, x), str(path))
            result["check_shape"] = list(x.shape)
    return result


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    """Logits of the ONNX model at ``path`` on ``x`` under ONNX Runtime (CPU, fp32).

    Raises:
        DependencyError: ONNX Runtime is not installed.
    """
    ort = require_onnxruntime(f"{path}: checking the export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    (out, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _require_exporter() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DependencyError(f"ONNX export needs {', '.join(missing)}, not installed; {INSTALL_HINT}")
    if not hasattr(torch.onnx, "ONNXProgram"):
        raise DependencyError(f"ONNX export needs PyTorch >= 2.6 (installed {torch.__version__})")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every operator library it skips (torchvision absent) and each optimisation pass, and
    warns about its internals; only errors are let through."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
