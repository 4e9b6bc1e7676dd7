"""Network architectures by name."""

from medseg.models.factory import MODEL_BUILDERS, build_model

__all__ = ["MODEL_BUILDERS", "build_model"]
