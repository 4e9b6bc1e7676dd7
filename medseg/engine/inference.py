"""Prediction from a checkpoint alone: preprocessing, network, TTA, postprocessing, label values.

``Predictor.from_checkpoint(path)`` needs nothing else: the checkpoint carries the config, the label
mapping and the preprocessing the model was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.config.loading import validate_config
from medseg.config.schema import ExperimentConfig, InferConfig
from medseg.data.labels import LabelMap
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.device import resolve_device
from medseg.engine.postprocess import keep_largest_component
from medseg.errors import CheckpointError, DataError
from medseg.io.images import read_image
from medseg.models.factory import build_model

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A trained model with everything needed to turn input files into label maps.

    Attributes:
        model: The network in eval mode on ``device``.
        config: The experiment config it was trained with.
        labels: Gray value <-> class mapping (predictions come back in the original gray values).
        preprocessing: What the training did to inputs (size, colour, windows, spacing ...).
        infer: Sliding-window / TTA / postprocessing settings (from the checkpoint, overridable).
        device: Where the network runs.
    """

    model: torch.nn.Module
    config: ExperimentConfig
    labels: LabelMap
    preprocessing: dict[str, Any]
    infer: InferConfig
    device: torch.device
    source: str = ""
    in_channels: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", **infer_overrides: Any) -> Predictor:
        """Load a medseg checkpoint (``weights_only=True``) and build the predictor.

        Args:
            path: A ``.pt`` checkpoint or a run folder (``checkpoints/best.pt`` is used, else ``last.pt``).
            device: ``auto``, ``cpu`` or ``cuda``.
            **infer_overrides: Fields of :class:`~medseg.config.InferConfig` to override (e.g. ``tta=True``).

        Raises:
            CheckpointError: Not a medseg checkpoint, damaged, or weights not matching the stored config.
        """
        ckpt = load_checkpoint(path)
        cfg = validate_config(ckpt["config"], source=f"{ckpt['path']} (stored config)")
        try:
            labels = LabelMap.from_dict(ckpt["labels"])
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{ckpt['path']}: checkpoint labels are malformed: {err}") from None
        dev = resolve_device(device)
        model = build_model(cfg.model, in_channels=ckpt["in_channels"], out_channels=ckpt["out_channels"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            reason = str(err)[:200]
            raise CheckpointError(f"{ckpt['path']}: weights do not fit the stored model config: {reason}") from None
        model.to(dev).eval()
        infer = cfg.infer.model_copy(update={k: v for k, v in infer_overrides.items() if v is not None})
        infer = InferConfig.model_validate(infer.model_dump())
        return cls(model, cfg, labels, dict(ckpt["preprocessing"]), infer, dev, source=str(ckpt["path"]),
                   in_channels=int(ckpt["in_channels"]))

    @property
    def spatial_dims(self) -> int:
        """2 for image models (also slice-wise models), 3 for volume models."""
        return self.config.model.spatial_dims

    def with_infer(self, **overrides: Any) -> Predictor:
        """A copy with some inference settings changed."""
        infer = InferConfig.model_validate({**self.infer.model_dump(), **overrides})
        return replace(self, infer=infer)

    def predict(self, source: Any) -> Any:
        """Segment one input with this model.

        Args:
            source: For a 2D image model, an image file or array (returns the mask in gray values). For a
                volume model (3D, or 2D slice-wise), a NIfTI/MHA/NRRD file, a DICOM series folder or a
                :class:`~medseg.io.volumes.Volume` (returns a label-map ``Volume`` on the input's grid).
        """
        if self.preprocessing.get("kind") == "images2d":
            return self.predict_image(source)
        from medseg.engine.volume_predict import predict_volume

        return predict_volume(self, source)

    # ----------------------------------------------------------------------------------------- 2D
    def predict_image(self, image: str | Path | np.ndarray) -> np.ndarray:
        """Segment one 2D image; returns a mask of the image's size in the original gray values.

        Args:
            image: An image file, or an array (H, W, 3) / (H, W) uint8.

        Raises:
            DataError: Unreadable image, or this checkpoint is not a 2D image model.
        """
        return self.labels.to_values(self.predict_image_classes(image))

    @torch.no_grad()
    def predict_image_classes(self, image: str | Path | np.ndarray) -> np.ndarray:
        """Like :meth:`predict_image` but returns class indices 0..K-1 (uint8)."""
        pre = self.preprocessing
        if pre.get("kind") != "images2d":
            raise DataError(
                f"{self.source}: this checkpoint was trained on {pre.get('kind')!r} data; "
                "predict_image needs a 2D image model (use predict for volumes)"
            )
        array = read_image(Path(image), mode="RGB" if pre["color"] == "rgb" else "L") if not isinstance(
            image, np.ndarray) else np.asarray(image)
        array = _channels(array, pre["color"], str(image) if not isinstance(image, np.ndarray) else "array")
        h, w = array.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()[None] * float(pre["scale"])
        size = tuple(pre["image_size"])
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True) if x.shape[-2:] != size else x
        probs = self._forward_2d(x.to(self.device))
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        classes = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()
        if self.infer.largest_component:
            classes = keep_largest_component(classes, self.labels.num_classes)
        return classes

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        flips: list[tuple[int, ...]] = [()]
        if self.infer.tta:
            flips += [(2,), (3,), (2, 3)]
        batch = torch.cat([x.flip(f) if f else x for f in flips])
        probs = torch.softmax(self.model(batch).float(), dim=1)
        out = sum(p[None].flip(f) if f else p[None] for p, f in zip(probs, flips, strict=True))
        return out / len(flips)  # type: ignore[operator]


def _channels(array: np.ndarray, color: str, source: str) -> np.ndarray:
    if color == "rgb":
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise DataError(f"{source}: expected an RGB image (H, W, 3), got shape {array.shape}")
        return array[..., :3]
    if array.ndim == 3:
        array = array[..., :3].mean(-1)
    return array[..., None]
