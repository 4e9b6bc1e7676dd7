"""Prediction from a checkpoint alone: ``Predictor.from_checkpoint(path).predict(source)``.

The checkpoint carries the config, the label mapping and the preprocessing the model was trained with, so
nothing else is needed. :meth:`Predictor.predict` sends a source to the image or the volume path by the
model's :class:`~medseg.config.kinds.DataKind`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from medseg.errors import ConfigError, DataError
from medseg.io.volume import Volume
from medseg.prediction.image import predict_image_classes, predict_image_outputs
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.volume import predict_volume

__all__ = ["OUTPUTS", "Prediction", "Predictor"]

#: What :meth:`Predictor.predict` can return.
OUTPUTS = ("labels", "probabilities")

#: What :meth:`Predictor.predict` returns: a 2D mask in gray values (image models) or a label-map volume.
Prediction = Union[np.ndarray, Volume]  # noqa: UP007 (a runtime alias; X | Y needs Python 3.10 at runtime too)


class Predictor(LoadedModel):
    """A trained model with everything needed to turn inputs into label maps.

    Build it with :meth:`from_checkpoint` (see :class:`~medseg.prediction.loaded.LoadedModel` for the fields).
    """

    def predict(self, source: str | Path | np.ndarray | Volume | Sequence[str | Path | Volume], *,
                series_uid: str | None = None, output: str = "labels") -> Prediction:
        """Segment one input with this model.

        Args:
            source: For a 2D image model, an image file or array (returns the mask in gray values, a
                numpy array of the image's size). For a volume model (3D, or 2D slice-wise), a
                NIfTI/MHA/NRRD file, a DICOM series folder or a :class:`~medseg.io.volume.Volume`
                (returns a label-map ``Volume`` on the input's grid); for a multi-channel volume model
                (``data.channels``) a list of those, one per channel in channel order (the result lies on the first
                one's grid).
            series_uid: Volume models: the series to read from a DICOM folder holding several (``medseg inspect
                FOLDER`` or :func:`~medseg.io.dicom.list_series` lists them).
            output: ``"labels"`` (the default, as above) or ``"probabilities"``: the class probabilities on the
                input's own grid, a float16 numpy array ``(K, H, W)`` or ``(K, X, Y, Z)``, class first, classes in
                the order of ``self.labels.names``; resampled back like the labels, so their argmax is the labels
                except at ties (and where ``infer.largest_component`` removed a region).

        Raises:
            TypeError: ``source`` is none of the types above.
            DataError: The source does not suit this kind of model, or cannot be read.
            ConfigError: ``series_uid`` with an image model, or with a file or ``Volume`` (it chooses a series
                of a DICOM folder); ``output`` not ``"labels"`` or ``"probabilities"``.
        """
        if output not in OUTPUTS:
            raise ConfigError(f"output: got {output!r}; allowed: {', '.join(OUTPUTS)}")
        if isinstance(source, (list, tuple)):
            if not self.kind.segments_volumes:
                raise TypeError(f"source: a list (one path or medseg.Volume per input channel) is taken by volume "
                                f"models only, this is a {self.kind.value} model; give one path or numpy array")
            if not all(isinstance(s, (str, Path, Volume)) for s in source):
                raise TypeError("source: a list holds one path (str or pathlib.Path) or medseg.Volume per input "
                                f"channel; got {[type(s).__name__ for s in source]}")
        elif not isinstance(source, (str, Path, np.ndarray, Volume)):
            raise TypeError(f"source: expected a path (str or pathlib.Path), a numpy array or a medseg.Volume, got "
                            f"{type(source).__name__}")
        if series_uid is not None and not isinstance(series_uid, str):
            raise TypeError(f"series_uid: expected a str (a DICOM SeriesInstanceUID) or None, got "
                            f"{type(series_uid).__name__}")
        if not self.kind.segments_volumes:
            if series_uid is not None:
                raise ConfigError(f"series_uid: got {series_uid!r} but {self.source} is a {self.kind.value} model "
                                  "(2D images); series_uid chooses a DICOM series for volume models only")
            if isinstance(source, (Volume, list, tuple)):
                raise DataError(f"{self.source}: a 2D image model cannot segment a Volume; give an image")
            if output == "probabilities":
                probs = predict_image_outputs(self, source, probabilities=True)[1]
                assert probs is not None  # asked for
                return probs
            return self.predict_image(source)
        if isinstance(source, np.ndarray):
            raise DataError(f"{self.source}: a {self.kind.value} model segments volumes; wrap the array in a "
                            "medseg.Volume with its affine, or give a file or DICOM folder")
        result = predict_volume(self, source, series_uid=series_uid, probabilities=output == "probabilities")
        return result.meta.pop("probabilities") if output == "probabilities" else result

    def predict_image(self, image: str | Path | np.ndarray) -> np.ndarray:
        """Segment one 2D image; returns a mask of the image's size in the original gray values.

        Args:
            image: An image file, or an array (H, W, 3) / (H, W) uint8.

        Raises:
            TypeError: ``image`` is neither a path nor a numpy array.
            DataError: Unreadable image, a folder, an empty or non-numeric array, or this checkpoint is not a 2D
                image model.
        """
        return np.asarray(self.labels.to_values(self.predict_image_classes(image)))

    def predict_image_classes(self, image: str | Path | np.ndarray) -> np.ndarray:
        """Like :meth:`predict_image` but returns class indices 0..K-1 (uint8)."""
        return predict_image_classes(self, image)
