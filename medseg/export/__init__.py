"""Trained models out of medseg: ONNX, TorchScript and MONAI bundles, each with its labels and preprocessing.

See :func:`medseg.export.run.export_model` and docs/export.md.
"""

from __future__ import annotations

from medseg.export.run import EXPORT_FORMATS, ExportReport, export_model

__all__ = ["EXPORT_FORMATS", "ExportReport", "export_model"]
