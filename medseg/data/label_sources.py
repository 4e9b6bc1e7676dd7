"""Where a run's label map comes from: the config's ``data.labels.classes``, or a checkpoint's ``labels`` entry.

(Discovering it from the masks themselves is :func:`medseg.data.label_discovery.discover_label_map`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg.config.schema import LabelsConfig
from medseg.data.labels import LabelMap
from medseg.errors import CheckpointError

__all__ = ["label_map_from_config", "labels_from_checkpoint"]


def labels_from_checkpoint(checkpoint: Mapping[str, Any]) -> LabelMap:
    """The label map stored in a checkpoint loaded by :func:`medseg.checkpoint.load_checkpoint`.

    The one place a checkpoint's ``labels`` entry is parsed (prediction, evaluation and resumed training use it).

    Raises:
        CheckpointError: The entry is missing or malformed, naming the checkpoint file.

    Example:
        >>> labels_from_checkpoint({"labels": {"classes": [{"name": "background", "values": [0]},
        ...                                                {"name": "polyp", "values": [255]}]}}).names
        ['background', 'polyp']
    """
    where = checkpoint.get("path", "checkpoint")
    try:
        return LabelMap.from_dict(checkpoint["labels"])
    except (TypeError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{where}: checkpoint entry 'labels' is malformed: {reason}") from None


def label_map_from_config(cfg: LabelsConfig) -> LabelMap | None:
    """The label map of ``data.labels.classes``, or None when the values are to be discovered from the masks.

    Example:
        >>> from medseg.config.schema import LabelsConfig
        >>> label_map_from_config(LabelsConfig(classes={0: "background", 255: "polyp"})).names
        ['background', 'polyp']
        >>> label_map_from_config(LabelsConfig()) is None
        True
    """
    if cfg.classes is None:
        return None
    return LabelMap.from_classes([(c.name, list(c.values)) for c in cfg.classes], unlisted=cfg.unlisted)
