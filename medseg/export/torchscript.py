"""Export to TorchScript: ``torch.jit.script`` of the network, the medseg document as ``medseg.json`` inside.

Read it back with ``torch.jit.load(path, _extra_files={"medseg.json": ""})``. Scripting (rather than tracing)
keeps every input size valid. PyTorch 2.13 marks TorchScript as deprecated; it is offered for runtimes that
still load it (LibTorch, older MONAI deploy tools). The file is checked against the PyTorch network before it
gets its name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from medseg.atomic import atomic_path
from medseg.errors import ExportError
from medseg.export.checks import check_outputs, example_input, run_reference
from medseg.export.metadata import model_metadata
from medseg.models.outputs import main_output
from medseg.prediction.artifact import METADATA_KEY
from medseg.prediction.loaded import LoadedModel

__all__ = ["EXTRA_FILE", "export_torchscript", "read_torchscript_metadata"]

#: Name of the medseg document inside the TorchScript archive.
EXTRA_FILE = f"{METADATA_KEY}.json"


def export_torchscript(loaded: LoadedModel, path: Path, *, check: bool = True) -> dict[str, Any]:
    """Write ``loaded``'s network as a TorchScript archive with ``medseg.json`` inside, atomically.

    Args:
        loaded: A model loaded from a medseg checkpoint (on the CPU).
        path: The ``.ts`` file to write.
        check: Load the written archive and compare its logits with the network's on seeded noise of the
            roi size before it gets its name.

    Returns:
        ``{"max_abs_diff": float | None, "check_shape": [...]}``.

    Raises:
        ExportError: The network cannot be scripted, or the archive computes something else.
    """
    network = loaded.model.to("cpu").eval()
    meta = model_metadata(loaded, export={"format": "torchscript", "method": "torch.jit.script",
                                          "torch_version": torch.__version__, "extra_file": EXTRA_FILE})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        try:
            scripted = torch.jit.script(network)
        except Exception as err:  # torch.jit raises frontend errors of several types
            reason = " ".join(str(err).split())[:300]
            raise ExportError(f"{path}: {type(network).__name__} cannot be scripted ({reason}); export it with "
                              "--format onnx") from None
        result: dict[str, Any] = {"max_abs_diff": None, "check_shape": None}
        with atomic_path(path, suffix=".ts") as tmp:
            torch.jit.save(scripted, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})
            if check:
                x = example_input(loaded)
                reloaded = torch.jit.load(str(tmp), map_location="cpu")
                with torch.no_grad():
                    out = main_output(reloaded(x)).float()
                result["max_abs_diff"] = check_outputs(run_reference(loaded, x), out, str(path))
                result["check_shape"] = list(x.shape)
    return result


def read_torchscript_metadata(path: str | Path) -> str:
    """The ``medseg.json`` text of an exported TorchScript archive ("" when it has none)."""
    files = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    value = files[EXTRA_FILE]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
