"""A trained model loaded from its checkpoint alone, with everything needed to use it.

:class:`LoadedModel` is the data; :class:`~medseg.prediction.predictor.Predictor` adds the ``predict``
methods. The one-case modules (:mod:`~medseg.prediction.image`, :mod:`~medseg.prediction.volume`) take a
``LoadedModel``, so they need not import the predictor that dispatches to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from medseg.checkpoint import load_checkpoint
from medseg.config.kinds import DataKind
from medseg.config.loading import upgrade_stored_config, validate_config
from medseg.config.schema import ExperimentConfig, InferConfig
from medseg.data.label_sources import labels_from_checkpoint
from medseg.data.labels import LabelMap
from medseg.device import resolve_device
from medseg.errors import CheckpointError, ConfigError
from medseg.models.factory import build_model
from medseg.prediction.onnx_network import is_onnx_file, load_onnx_network
from medseg.prediction.postprocess import ComponentRule, describe_rules, find_postprocessing, read_postprocessing
from medseg.prediction.settings import apply_infer_overrides

__all__ = ["LoadedModel", "mean_probabilities", "postprocessing_of"]

M = TypeVar("M", bound="LoadedModel")

log = logging.getLogger(__name__)


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
        source: The checkpoint file (or exported ONNX model).
        in_channels: Input channels of the network.
        divisor: What every tile dim must be a multiple of, one per spatial dim of the network; None reads it
            from the network (MONAI UNet strides). Set for networks that cannot be inspected (ONNX Runtime).
        tiling: The sliding window's tiling: "auto" (larger tiles where the network allows, decided by
            inspecting it) or "roi" (roi-size windows, for networks whose output depends on the window).
        postprocessing: Per-class component rules (class index -> rule) from the run's ``postprocessing.json``
            (``medseg postprocess-select``), applied after ``infer.largest_component``; None when there are none.
        postprocessing_file: The ``postprocessing.json`` those rules came from (recorded in the outputs).
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
    divisor: tuple[int, ...] | None = None
    tiling: str = "auto"
    postprocessing: dict[int, ComponentRule] | None = None
    postprocessing_file: str | None = None

    @classmethod
    def from_checkpoint(
        cls: type[M], path: str | Path, *, device: str = "auto", spell: Callable[[str], str] | None = None,
        postprocessing: bool = True, **infer_overrides: Any,
    ) -> M:
        """Load a medseg checkpoint (``weights_only=True``) and build the model.

        Args:
            path: A ``.pt`` checkpoint or a run folder (``checkpoints/best.pt`` is used, else ``last.pt``), or an
                ``.onnx`` model exported by ``medseg export`` (see :meth:`from_onnx`).
            device: ``auto``, ``cpu`` or ``cuda``.
            spell: How a setting is named in error messages (the CLI passes its option names).
            postprocessing: Apply the run's ``postprocessing.json`` when there is one (see
                :func:`~medseg.prediction.postprocess.find_postprocessing`), unless ``largest_component`` is
                given explicitly (then that alone decides). False: the checkpoint's own settings only.
            **infer_overrides: Fields of :class:`~medseg.config.InferConfig` to override (e.g. ``tta=True``);
                ``None`` values keep the stored setting, but a name that is no setting is an error.

        Raises:
            CheckpointError: Not a medseg checkpoint, damaged, or weights not matching the stored config.
            DataError: The run's ``postprocessing.json`` is unreadable or names other classes.
            ConfigError: An override names no inference setting, has a value out of range, or does not
                apply to this kind of model.
            DependencyError: An ``.onnx`` file and ONNX Runtime is not installed.
        """
        if is_onnx_file(path):
            return cls.from_onnx(path, device=device, spell=spell, **infer_overrides)
        ckpt = load_checkpoint(path)
        cfg, labels, kind, infer = _settings(ckpt, ckpt["path"], spell, infer_overrides)
        dev = resolve_device(device)
        model = build_model(cfg.model, in_channels=ckpt["in_channels"], out_channels=ckpt["out_channels"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            reason = str(err)[:200]
            raise CheckpointError(f"{ckpt['path']}: weights do not fit the stored model config: {reason}") from None
        model.to(dev).eval()
        found, rules = _run_postprocessing(Path(ckpt["path"]), labels, infer_overrides.get("largest_component"),
                                           spell or (lambda name: name)) if postprocessing else (None, None)
        return cls(model, cfg, labels, dict(ckpt["preprocessing"]), infer, dev, kind, source=str(ckpt["path"]),
                   in_channels=int(ckpt["in_channels"]), postprocessing=rules,
                   postprocessing_file=str(found) if rules else None)

    @classmethod
    def from_onnx(
        cls: type[M], path: str | Path, *, device: str = "auto", spell: Callable[[str], str] | None = None,
        **infer_overrides: Any,
    ) -> M:
        """Load an ONNX model exported by ``medseg export``; it runs under ONNX Runtime in the same engine.

        Labels, preprocessing, inference settings and what the sliding window needs (divisor, whether the
        network needs roi-size windows) come from the model's medseg metadata.

        Args:
            path: The ``.onnx`` file.
            device: ``auto``, ``cpu`` or ``cuda`` (CUDA only with an ONNX Runtime that has its provider).
            spell: How a setting is named in error messages.
            **infer_overrides: As for :meth:`from_checkpoint`.

        Raises:
            CheckpointError: Not an ONNX model, or no (or malformed) medseg metadata in it.
            ConfigError: A bad override, or a precision other than auto or fp32 (ONNX Runtime runs the exported
                fp32 network; a stored bf16/fp16 setting becomes fp32).
            DependencyError: ONNX Runtime is not installed (the message names ``pip install "medseg[onnx]"``).
        """
        dev = resolve_device(device)
        network, meta = load_onnx_network(path, dev)
        source = str(path)
        parts = {**meta, "path": source, "in_channels": meta["network"]["in_channels"],
                 "out_channels": meta["network"]["out_channels"]}
        cfg, labels, kind, infer = _settings(parts, source, spell, infer_overrides)
        if labels.num_classes != network.out_channels:
            raise CheckpointError(f"{source}: medseg metadata lists {labels.num_classes} classes but the network "
                                  f"has {network.out_channels} outputs (damaged file?)")
        divisor = tuple(meta["network"]["divisor"])
        if len(divisor) != kind.spatial_dims:
            raise CheckpointError(f"{source}: medseg metadata entry network.divisor {list(divisor)} does not fit a "
                                  f"{kind.value} model ({kind.spatial_dims} sizes)")
        tiling = "roi" if meta["network"]["window_dependent"] else "auto"
        infer = _fp32_only(infer, infer_overrides.get("precision"), spell or (lambda name: name))
        return cls(network.eval(), cfg, labels, dict(meta["preprocessing"]), infer, dev, kind, source=source,
                   in_channels=network.in_channels, divisor=divisor, tiling=tiling)

    @property
    def spatial_dims(self) -> int:
        """2 for image models (also slice-wise models), 3 for volume models."""
        return self.kind.spatial_dims

    def postprocessing_record(self) -> dict[str, Any]:
        """The ``postprocessing.json`` rules applied, for an output's sidecar: the file and each class's rule
        (``none``, ``largest_component`` or ``remove_small < N``); empty rules when none are applied.

        Example:
            >>> from medseg.data.labels import LabelMap
            >>> m = LoadedModel(None, None, LabelMap.from_mapping({0: "bg", 1: "body"}), {}, None, None, None,
            ...                 postprocessing={1: ComponentRule("largest_component")},
            ...                 postprocessing_file="run/postprocessing.json")  # type: ignore[arg-type]
            >>> m.postprocessing_record()
            {'file': 'run/postprocessing.json', 'classes': {'body': 'largest_component'}}
        """
        rules = self.postprocessing or {}
        return {"file": self.postprocessing_file,
                "classes": {self.labels.names[k]: r.text() for k, r in sorted(rules.items())}}

    @property
    def members(self) -> tuple[LoadedModel, ...]:
        """The models whose class probabilities a prediction averages: this one alone (an
        :class:`~medseg.prediction.ensemble.Ensemble` has several)."""
        return (self,)


def mean_probabilities(loaded: LoadedModel, run: Callable[[LoadedModel], torch.Tensor]) -> torch.Tensor:
    """The mean of ``run(member)`` (class probabilities) over ``loaded.members``, for one model ``run(loaded)``.

    Memory: the first member's result becomes the running sum, each further member's is added into it in place
    and dropped, so at most one sum and one member's result are held at a time, whatever the number of members.
    Two members that give the same probabilities give exactly them back ((p + p) / 2 is exact in floating point).

    Example:
        >>> class Two:
        ...     members = ("a", "b")
        >>> mean_probabilities(Two(), lambda m: torch.tensor([1.0, 0.0]) if m == "a" else torch.tensor([0.5, 0.5]))
        tensor([0.7500, 0.2500])
    """
    members = loaded.members
    total = run(members[0])
    for member in members[1:]:
        part = run(member)
        total += part
        del part
    if len(members) > 1:
        total /= len(members)
    return total


def _run_postprocessing(checkpoint: Path, labels: LabelMap, explicit: bool | None, spell: Callable[[str], str],
                        *, quiet: bool = False) -> tuple[Path | None, dict[int, ComponentRule] | None]:
    """The run's ``postprocessing.json`` and its per-class rules, unless ``largest_component`` was given."""
    found = find_postprocessing(checkpoint)
    if found is None:
        return None, None
    if explicit is not None:
        log.info("postprocessing: %s given explicitly, so %s is not applied",
                 spell("largest_component" if explicit else "all_components"), found)
        return None, None
    rules = read_postprocessing(found, labels)
    if not quiet:
        log.info("postprocessing from %s: %s", found, describe_rules(rules, labels))
    return found, rules


def postprocessing_of(checkpoint: str | Path, labels: LabelMap) -> tuple[Path | None, dict[int, ComponentRule] | None]:
    """The ``postprocessing.json`` a checkpoint finds on its own (:func:`~medseg.prediction.postprocess.
    find_postprocessing`) and its rules read for ``labels``; (None, None) when there is none.

    Raises:
        DataError: The file is unreadable or names other classes.
    """
    return _run_postprocessing(Path(checkpoint), labels, None, lambda name: name, quiet=True)


def _settings(
    ckpt: dict[str, Any], source: str, spell: Callable[[str], str] | None, overrides: dict[str, Any]
) -> tuple[ExperimentConfig, LabelMap, DataKind, InferConfig]:
    """Config, labels, kind and inference settings of a checkpoint (or of an export's metadata)."""
    cfg = validate_config(upgrade_stored_config(ckpt["config"]), source=f"{source} (stored config)")
    labels = labels_from_checkpoint(ckpt)
    kind = _kind_of(ckpt, cfg)
    infer = apply_infer_overrides(cfg.infer, overrides, kind, spell=spell or (lambda name: name))
    _check_roi_bottleneck(cfg, infer, spell or (lambda name: name))
    if infer.threshold is not None and labels.num_classes != 2:
        raise ConfigError(f"{(spell or (lambda name: name))('threshold')}: got {infer.threshold}; a threshold applies "
                          f"to two-class models only and {source} has {labels.num_classes} classes "
                          f"({', '.join(labels.names)})")
    return cfg, labels, kind, infer


def _check_roi_bottleneck(cfg: ExperimentConfig, infer: InferConfig, spell: Callable[[str], str]) -> None:
    """A network normalising its deepest level (instance/group norm) runs roi-sized windows: each side must leave
    more than one voxel there."""
    div = cfg.model.divisor
    if not cfg.model.needs_above_divisor or infer.roi_size is None or all(n > div for n in infer.roi_size):
        return
    raise ConfigError(
        f"{spell('roi_size')}: got {list(infer.roi_size)}; this network normalises its deepest level and needs "
        f"windows larger than {div} (its total down-sampling), e.g. {[max(n, 2 * div) for n in infer.roi_size]}"
    )


def _fp32_only(infer: InferConfig, requested: Any, spell: Callable[[str], str]) -> InferConfig:
    """ONNX Runtime runs the exported network in fp32: ask for bf16/fp16 and be told so; stored ones give way."""
    if requested in ("bf16", "fp16"):
        raise ConfigError(f"{spell('precision')}: got {requested!r}; an ONNX model runs in fp32 under ONNX Runtime "
                          "(allowed: auto or fp32)")
    return infer.model_copy(update={"precision": "fp32"})


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
