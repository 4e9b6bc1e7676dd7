"""``medseg export``: a checkpoint becomes an ONNX model, a TorchScript archive or a MONAI bundle.

Each artifact carries the network and everything needed to use it (labels and their gray values, channel
order, spacing, orientation, CT windows or normalisation, roi size, sliding-window settings: the document of
:mod:`medseg.prediction.artifact`). Each is checked against the PyTorch network before it gets its name
(:mod:`medseg.export.checks`), and nothing is overwritten without ``overwrite``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import CheckpointError, ConfigError, OutputExistsError
from medseg.export.bundle import export_bundle
from medseg.export.checks import ATOL, RTOL
from medseg.export.onnx_export import export_onnx
from medseg.export.torchscript import export_torchscript
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.onnx_network import is_onnx_file

__all__ = ["EXPORT_FORMATS", "ExportReport", "export_model"]

#: Format -> the suffix its output must have ("" for the bundle folder).
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".ts", "bundle": ""}


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how well it matched PyTorch.

    Attributes:
        path: The file or bundle folder written.
        format: ``onnx``, ``torchscript`` or ``bundle``.
        max_abs_diff: Largest |exported - PyTorch| logit on the check input (None when not checked).
        check_shape: Shape of the check input (seeded noise of the roi size).
        opset: The ONNX opset (ONNX only).
        seconds: Time taken.
    """

    path: Path
    format: str
    max_abs_diff: float | None
    check_shape: tuple[int, ...] | None
    opset: int | None
    seconds: float

    def summary(self) -> str:
        """One line for the command line."""
        parts = [f"{self.format} written to {self.path}"]
        if self.opset is not None:
            parts.append(f"opset {self.opset}")
        if self.max_abs_diff is not None and self.check_shape is not None:
            shape = "x".join(map(str, self.check_shape))
            parts.append(f"max abs diff vs PyTorch {self.max_abs_diff:.3g} on a {shape} input "
                         f"(allowed {ATOL:g} + {RTOL:g} x |logit|)")
        else:
            parts.append("not checked")
        return ", ".join(parts) + f", {self.seconds:.1f}s"


def export_model(
    source: str | Path, output: str | Path, *, format: str, overwrite: bool = False, check: bool = True,
) -> ExportReport:
    """Export a trained medseg model.

    Args:
        source: A medseg checkpoint (``.pt``) or run folder.
        output: The ``.onnx`` file, the ``.ts`` file, or the bundle folder.
        format: ``onnx``, ``torchscript`` or ``bundle``.
        overwrite: Replace an existing output.
        check: Compare the exported network with PyTorch's on seeded noise of the roi size (on by default).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: Unknown format, or an output name whose suffix does not fit the format.
        OutputExistsError: The output exists and ``overwrite`` is false (an empty bundle folder is used as it is),
            or the output is of the wrong kind (a folder for a file format, a file for a bundle).
        CheckpointError: ``source`` is not a medseg checkpoint (an ONNX file included).
        DependencyError: The packages the format needs are missing (``pip install "medseg[onnx]"``).
        ExportError: The export failed, its check failed, or the bundle cannot reproduce the model.
    """
    start = time.perf_counter()
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format: got {format!r}; allowed {', '.join(EXPORT_FORMATS)}")
    output = Path(output)
    suffix = EXPORT_FORMATS[format]
    if suffix and output.suffix.lower() != suffix:
        raise ConfigError(f"output: {format} export {output} must end in {suffix} (got {output.suffix or 'none'!r})")
    if not suffix and output.suffix.lower() in (".onnx", ".ts", ".pt", ".json"):
        raise ConfigError(f"output: a bundle is a folder, got a file name {output}; e.g. {output.with_suffix('')}")
    if suffix and output.is_dir():
        raise OutputExistsError(f"{output}: is a folder; choose a file name ending in {suffix}")
    if suffix and (output.exists() or output.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{output}: exists; pass --overwrite to replace it")
    if is_onnx_file(source):
        raise CheckpointError(f"{source}: is an exported ONNX model; export takes a medseg checkpoint (.pt) or a "
                              "run folder")
    loaded = LoadedModel.from_checkpoint(source, device="cpu")
    if format == "onnx":
        result = export_onnx(loaded, output, check=check)
    elif format == "torchscript":
        result = export_torchscript(loaded, output, check=check)
    else:
        result = export_bundle(loaded, output, overwrite=overwrite, check=check)
    shape = result.get("check_shape")
    return ExportReport(path=output, format=format, max_abs_diff=result.get("max_abs_diff"),
                        check_shape=None if shape is None else tuple(shape), opset=result.get("opset"),
                        seconds=time.perf_counter() - start)
