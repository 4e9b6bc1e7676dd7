"""A trained model loaded from its checkpoint alone, with everything needed to use it.

:class:`LoadedModel` is the data; :class:`~medseg.prediction.predictor.Predictor` adds the ``predict``
methods. The one-case modules (:mod:`~medseg.prediction.image`, :mod:`~medseg.prediction.volume`) take a
``LoadedModel``, so they need not import the predictor that dispatches to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from medseg.checkpoint import load_checkpoint
from medseg.config.kinds import DataKind
from medseg.config.loading import validate_config
from medseg.config.schema import ExperimentConfig, InferConfig
from medseg.data.labels import LabelMap, labels_from_checkpoint
from medseg.device import resolve_device
from medseg.errors import CheckpointError
from medseg.models.factory import build_model
from medseg.prediction.settings import apply_infer_overrides

__all__ = ["LoadedModel"]

M = TypeVar("M", bound="LoadedModel")


@dataclass
class LoadedModel:
    """A trained network and what it was trained with.

    Attributes:
        model: The network in eval mode on ``device``.
        config: The experiment config it was trained with.
        labels: Gray value <-> class mapping (predictions come back in the original gray values).
        preprocessing: What the training did to inputs (size, colour, windows, spacing ...).
        infer: Sliding-window / TTA / postprocessing settings (from the checkpoint, overridable).
        device: Where the network runs.
        kind: The kind of data the model segments (decided once, from the stored config).
        source: The checkpoint file.
        in_channels: Input channels of the network.
    """

    model: torch.nn.Module
    config: ExperimentConfig
    labels: LabelMap
    preprocessing: dict[str, Any]
    infer: InferConfig
    device: torch.device
    kind: DataKind
    source: str = ""
    in_channels: int = 1

    @classmethod
    def from_checkpoint(
        cls: type[M], path: str | Path, *, device: str = "auto", spell: Callable[[str], str] | None = None,
        **infer_overrides: Any,
    ) -> M:
        """Load a medseg checkpoint (``weights_only=True``) and build the model.

        Args:
            path: A ``.pt`` checkpoint or a run folder (``checkpoints/best.pt`` is used, else ``last.pt``).
            device: ``auto``, ``cpu`` or ``cuda``.
            spell: How a setting is named in error messages (the CLI passes its option names).
            **infer_overrides: Fields of :class:`~medseg.config.InferConfig` to override (e.g. ``tta=True``);
                ``None`` values keep the stored setting, but a name that is no setting is an error.

        Raises:
            CheckpointError: Not a medseg checkpoint, damaged, or weights not matching the stored config.
            ConfigError: An override names no inference setting, has a value out of range, or does not
                apply to this kind of model.
        """
        ckpt = load_checkpoint(path)
        cfg = validate_config(ckpt["config"], source=f"{ckpt['path']} (stored config)")
        labels = labels_from_checkpoint(ckpt)
        kind = _kind_of(ckpt, cfg)
        infer = apply_infer_overrides(cfg.infer, infer_overrides, kind, spell=spell or (lambda name: name))
        dev = resolve_device(device)
        model = build_model(cfg.model, in_channels=ckpt["in_channels"], out_channels=ckpt["out_channels"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            reason = str(err)[:200]
            raise CheckpointError(f"{ckpt['path']}: weights do not fit the stored model config: {reason}") from None
        model.to(dev).eval()
        return cls(model, cfg, labels, dict(ckpt["preprocessing"]), infer, dev, kind, source=str(ckpt["path"]),
                   in_channels=int(ckpt["in_channels"]))

    @property
    def spatial_dims(self) -> int:
        """2 for image models (also slice-wise models), 3 for volume models."""
        return self.kind.spatial_dims


def _kind_of(ckpt: dict[str, Any], cfg: ExperimentConfig) -> DataKind:
    """The stored config's ``data.kind``; the preprocessing entry, when it names one, must agree."""
    kind = DataKind(cfg.data.kind)
    stored = ckpt.get("preprocessing", {}).get("kind")
    if stored is not None and stored != kind.value:
        raise CheckpointError(
            f"{ckpt['path']}: checkpoint preprocessing is for {stored!r} data but its config says data.kind "
            f"{kind.value!r} (damaged file?)"
        )
    return kind
