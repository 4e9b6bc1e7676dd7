"""The planning rules: from a fingerprint and the stated memory to a config and, per value, why (:func:`plan_config`).

The rules themselves are listed in :mod:`medseg.planning.planner`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medseg.config.kinds import DataKind
from medseg.config.schema import ModelConfig
from medseg.errors import DataError
from medseg.planning.device_memory import DeviceMemory
from medseg.planning.fingerprint import ChannelFingerprint, Fingerprint
from medseg.planning.memory import training_bytes
from medseg.planning.plan_document import Plan

__all__ = ["ANISOTROPY", "BATCH_SHARE", "MEMORY_SHARE", "plan_config"]

#: Largest/smallest median spacing above which a set counts as anisotropic.
ANISOTROPY = 3.0
#: Share of the memory a plan may use (the rest: data loading, fragmentation).
MEMORY_SHARE = 0.85
#: Most of the data set one batch may cover.
BATCH_SHARE = 0.05


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _round_to(n: float, divisor: int) -> int:
    return max(2 * divisor, int(round(n / divisor)) * divisor)


def _levels(smallest: int, most: int) -> int:
    """Halvings while the bottom of the network keeps >= 8 voxels along the smallest axis."""
    return max(1, min(most, int(math.floor(math.log2(max(smallest, 16) / 8)))))


def _model(device: str, dims: int, levels: int, norm: str) -> dict[str, Any]:
    widths = [32, 64, 128, 256, 320, 320] if device == "cuda" else [16, 32, 64, 128, 256, 256]
    return {"name": "unet", "spatial_dims": dims, "channels": widths[: levels + 1], "strides": [2] * levels,
            "num_res_units": 2, "norm": norm}


def _fit(model: dict[str, Any], *, patch: list[int], median: list[float], in_ch: int, out_ch: int,
         memory: DeviceMemory, min_batch: int) -> tuple[list[int], int]:
    """Shrink the patch until ``min_batch`` samples fit, along the axis largest relative to the median shape."""
    cfg = ModelConfig.model_validate(model)
    divisor = math.prod(cfg.strides)
    budget = memory.bytes * MEMORY_SHARE

    def cost(p: list[int], b: int) -> float:
        return training_bytes(cfg, in_channels=in_ch, out_channels=out_ch, patch=tuple(p), batch_size=b,
                              device=memory.device)

    patch = list(patch)
    while cost(patch, min_batch) > budget:
        ratios = [p / m if p > 2 * divisor else -1.0 for p, m in zip(patch, median, strict=True)]
        axis = int(np.argmax(ratios))
        if ratios[axis] < 0:
            raise DataError(f"--device-memory: {memory.label} does not hold a batch of {min_batch} at the smallest "
                            f"patch {patch} ({cost(patch, min_batch) / 2**30:.2f} GiB needed); give more memory")
        patch[axis] -= divisor
    return patch, divisor


def _batch(model: dict[str, Any], *, patch: list[int], in_ch: int, out_ch: int, memory: DeviceMemory,
           start: int, data_voxels: float) -> tuple[int, str]:
    cfg = ModelConfig.model_validate(model)
    budget = memory.bytes * MEMORY_SHARE
    cap = max(2, int(BATCH_SHARE * data_voxels / math.prod(patch)))
    batch = min(start, cap)
    while batch > 2 and training_bytes(cfg, in_channels=in_ch, out_channels=out_ch, patch=tuple(patch),
                                       batch_size=batch, device=memory.device) > budget:
        batch -= 1
    while batch < cap and batch < 64 and training_bytes(cfg, in_channels=in_ch, out_channels=out_ch,
                                                        patch=tuple(patch), batch_size=batch + 1,
                                                        device=memory.device) <= budget:
        batch += 1
    need = training_bytes(cfg, in_channels=in_ch, out_channels=out_ch, patch=tuple(patch), batch_size=batch,
                          device=memory.device)
    why = (f"largest that fits ({need / 2**30:.2f} GiB of {memory.label}, estimated by a measured probe) with one "
           f"batch covering <= {BATCH_SHARE:.0%} of the data (cap {cap}), at least 2")
    return batch, why


def _labels(fp: Fingerprint) -> tuple[list[dict[str, Any]], str]:
    values = list(fp.label_values)
    names = fp.label_names or {}
    unknown = [v for v in values if names and v not in names]
    if unknown:
        raise DataError(f"{fp.root}/dataset.json: the masks hold values {unknown} that its 'labels' do not name")
    classes = [{"name": names.get(v, "background" if v == values[0] else f"class_{v}"), "values": [v]}
               for v in (sorted(names) if names else values)]
    why = "from dataset.json" if names else f"the {len(values)} values found in the masks (lowest is background)"
    return classes, why


def plan_config(fp: Fingerprint, memory: DeviceMemory, *, root: str) -> Plan:
    """The config :func:`plan_dataset` writes, from a fingerprint and the stated memory.

    Args:
        fp: The data set's fingerprint.
        memory: The device and its memory.
        root: ``data.root`` as it should appear in the YAML (relative to the config's folder).
    """
    if fp.kind == DataKind.VOLUMES3D.value:
        return _plan_volumes(fp, memory, root)
    return _plan_images(fp, memory, root)


def _plan_volumes(fp: Fingerprint, memory: DeviceMemory, root: str) -> Plan:
    reasons: dict[str, str] = {}
    spacings = np.asarray([c.spacing for c in fp.cases], dtype=np.float64)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    if target.max() / target.min() > ANISOTROPY:
        target[coarse] = float(np.percentile(spacings[:, coarse], 10))
        reasons["data.spacing_mm"] = (f"median spacing per axis (R, A, S), but the median is anisotropic "
                                      f"(> {ANISOTROPY:g}x): the coarse axis takes its 10th percentile")
    else:
        reasons["data.spacing_mm"] = f"median spacing per axis (R, A, S) over {len(fp.cases)} cases"
    target = np.round(target, 3)
    shapes = np.asarray([[n * s / t for n, s, t in zip(c.shape, c.spacing or [], target, strict=True)]
                         for c in fp.cases])
    median_shape = [float(v) for v in np.median(shapes, axis=0)]
    data_voxels = float(shapes.prod(axis=1).sum())
    cap = 192 if memory.device == "cuda" else 128
    start = [min(m, cap) for m in median_shape]
    levels = _levels(int(min(start)), 5 if memory.device == "cuda" else 4)
    model = _model(memory.device, 3, levels, "instance")
    ct = fp.modality == "CT"
    in_ch = max(1, len(fp.channels))  # one window per CT channel, z-score otherwise: one network input each
    out_ch = len(fp.label_values) if not fp.label_names else len(fp.label_names)
    divisor = 2**levels
    patch = [min(_round_to(s, divisor), _round_to(cap, divisor)) for s in start]
    fitted, divisor = _fit(model, patch=patch, median=median_shape, in_ch=in_ch, out_ch=out_ch, memory=memory,
                           min_batch=2)
    shrunk = "shrunk to fit the memory" if fitted != patch else "fits the memory as it is"
    patch = fitted
    batch, batch_why = _batch(model, patch=patch, in_ch=in_ch, out_ch=out_ch, memory=memory, start=2,
                              data_voxels=data_voxels)
    classes, labels_why = _labels(fp)
    reasons["data.patch_size"] = (f"median shape at that spacing {[round(m) for m in median_shape]}, capped at "
                                  f"{cap}, multiple of {divisor} (the network's stride), {shrunk}")
    reasons["data.labels.classes"] = labels_why
    data: dict[str, Any] = {
        "kind": "volumes3d", "root": root, "images_dir": fp.images_dir, "masks_dir": fp.masks_dir,
        "val_fraction": 0.2, "seed": 0, "labels": {"classes": classes},
    }
    if len(fp.channels) > 1:
        data["channels"], reasons["data.channels"] = _channels(fp.channels)
    elif ct and fp.intensity is not None:
        lo, hi = fp.intensity["p00_5"], fp.intensity["p99_5"]
        data["windows"] = [_window(fp.intensity)]
        data["intensity"] = "ct_window"
        reasons["data.windows"] = (f"CT ({fp.modality_reason}): clip to the foreground's 0.5-99.5 percentiles "
                                   f"({lo:g}..{hi:g} HU), scaled to [0, 1]")
    else:
        data["intensity"] = "zscore"
        reasons["data.intensity"] = f"{fp.modality} ({fp.modality_reason})"
    data["spacing_mm"] = [float(t) for t in target]
    data["orientation"] = "RAS"
    data["patch_size"] = patch
    data["samples_per_volume"] = 4
    data["foreground_fraction"] = 0.67
    multi = len(classes) > 2
    data["augment"] = {"flip": not multi, "rotate_degrees": 15, "scale": 0.1, "brightness": 0.1, "contrast": 0.1,
                       "probability": 0.3}
    reasons["data.augment.flip"] = ("off: with several classes, flips can swap structures that differ only by "
                                    "side or order (left/right kidney, vertebra levels)" if multi else
                                    "on: one foreground class has no side or order to swap")
    reasons["model"] = (f"MONAI UNet, {levels} halvings (the smallest patch axis keeps >= 8 voxels at the bottom), "
                        f"{'nnU-Net widths' if memory.device == 'cuda' else 'half widths on CPU'}, instance norm")
    reasons["train.batch_size"] = batch_why
    reasons["infer.roi_size"] = "the training patch"
    reasons["data.orientation"] = "every case is turned to RAS (axis flips and swaps only, exactly undone on output)"
    reasons["data.val_fraction"] = "one fixed split (seed 0); folds are not planned yet"
    reasons["data.foreground_fraction"] = "two of three patches centred on a labelled voxel (small structures)"
    reasons["loss.name"] = "Dice + cross-entropy, as nnU-Net trains"
    reasons["train.max_epochs"] = ("a budget, not a rule: watch curves.png" +
                                   (" (CPU: hours per 100 epochs)" if memory.device == "cpu" else ""))
    reasons["infer.overlap"] = "half-window overlap with Gaussian blending, as nnU-Net predicts"
    config = {
        "version": 1, "data": data, "model": model, "loss": {"name": "dice_ce"},
        "train": {"max_epochs": 300 if memory.device == "cuda" else 100, "batch_size": batch, "lr": 0.001,
                  "optimizer": "adamw", "scheduler": {"name": "cosine", "warmup_epochs": 5}, "val_every": 5,
                  "device": "cuda" if memory.device == "cuda" else "cpu"},
        "infer": {"roi_size": patch, "overlap": 0.5, "sw_batch_size": 2, "blend": "gaussian"},
    }
    return Plan(config, reasons)


def _window(intensity: dict[str, float]) -> dict[str, float]:
    """One CT window over the foreground's 0.5-99.5 percentiles."""
    lo, hi = intensity["p00_5"], intensity["p99_5"]
    return {"center_hu": round((lo + hi) / 2, 1), "width_hu": round(max(hi - lo, 1.0), 1)}


def _channels(channels: list[ChannelFingerprint]) -> tuple[list[dict[str, Any]], str]:
    """``data.channels`` of a multi-channel set and why: a CT channel is windowed over its foreground's
    0.5-99.5 percentiles, any other channel z-scored per case (nnU-Net's rule)."""
    entries: list[dict[str, Any]] = []
    why: list[str] = []
    for c in channels:
        if c.modality == "CT" and c.intensity is not None:
            entries.append({"name": c.name, "intensity": "ct_window", "windows": [_window(c.intensity)]})
            why.append(f"_{c.index:04d} {c.name}: CT ({c.modality_reason}), window over the foreground's 0.5-99.5 "
                       f"percentiles ({c.intensity['p00_5']:g}..{c.intensity['p99_5']:g} HU)")
        else:
            entries.append({"name": c.name, "intensity": "zscore"})
            why.append(f"_{c.index:04d} {c.name}: z-score per case ({c.modality_reason})")
    return entries, "; ".join(why)


def _plan_images(fp: Fingerprint, memory: DeviceMemory, root: str) -> Plan:
    reasons: dict[str, str] = {}
    sizes = np.asarray([c.shape for c in fp.cases], dtype=np.float64)
    median = [float(v) for v in np.median(sizes, axis=0)]
    cap = 512 if memory.device == "cuda" else 192
    scale = min(1.0, cap / max(median))
    start = [m * scale for m in median]
    levels = _levels(int(min(start)), 5 if memory.device == "cuda" else 4)
    divisor = 2**levels
    size = [_round_to(s, divisor) for s in start]
    model = _model(memory.device, 2, levels, "batch")
    rgb = fp.modality == "rgb"
    in_ch = 3 if rgb else 1
    jpeg = any(s in fp.mask_format for s in (".jpg", ".jpeg"))
    if fp.label_names:
        classes, labels_why = _labels(fp)
        out_ch = len(classes)
        labels: dict[str, Any] = {"classes": classes}
    elif jpeg:
        out_ch = 2
        labels = {"tolerance": 20}
        labels_why = "JPEG masks: gray values within 20 of a class value snap to it; classes found at training"
    else:
        classes, labels_why = _labels(fp)
        out_ch = len(classes)
        labels = {"classes": classes}
    fitted, divisor = _fit(model, patch=size, median=median, in_ch=in_ch, out_ch=out_ch, memory=memory, min_batch=2)
    shrunk = ", shrunk to fit the memory" if fitted != size else ""
    size = fitted
    data_pixels = float(sum(math.prod(size) for _ in fp.cases))
    batch, batch_why = _batch(model, patch=size, in_ch=in_ch, out_ch=out_ch, memory=memory, start=12,
                              data_voxels=data_pixels)
    reasons["data.image_size"] = (f"median image {[round(m) for m in median]} scaled so the longer side is <= {cap}"
                                  f"{' (CPU: epochs stay short)' if memory.device == 'cpu' else ''}, multiple of "
                                  f"{divisor}{shrunk}")
    reasons["data.labels"] = labels_why
    reasons["data.color"] = fp.modality_reason
    reasons["data.augment.rotate90"] = ("on: colour photos (endoscopy, microscopy) have no up" if rgb else
                                        "off: gray images (X-ray, CT slices) have an anatomical up")
    reasons["model"] = f"MONAI UNet, {levels} halvings, batch norm (2D batches of {batch})"
    reasons["train.batch_size"] = batch_why
    data: dict[str, Any] = {
        "kind": "images2d", "root": root, "images_dir": fp.images_dir, "masks_dir": fp.masks_dir,
        "pairing": "same_stem", "color": "rgb" if rgb else "gray", "image_size": size, "val_fraction": 0.2,
        "seed": 0, "labels": labels,
        "augment": {"flip": True, "rotate90": rgb, "rotate_degrees": 30, "scale": 0.15, "brightness": 0.15,
                    "contrast": 0.2, "probability": 0.6},
    }
    config = {
        "version": 1, "data": data, "model": model, "loss": {"name": "dice_ce"},
        "train": {"max_epochs": 250 if memory.device == "cpu" else 500, "batch_size": batch, "lr": 0.002,
                  "optimizer": "adamw", "scheduler": {"name": "cosine", "warmup_epochs": 5},
                  "device": "cuda" if memory.device == "cuda" else "cpu"},
        "infer": {"tta": True},
    }
    reasons["infer.tta"] = "flips averaged at prediction (measured +0.04 Dice on Kvasir, docs/benchmarks.md)"
    reasons["data.val_fraction"] = "one fixed split (seed 0); folds are not planned yet"
    reasons["loss.name"] = "Dice + cross-entropy"
    reasons["train.max_epochs"] = "a budget, not a rule: watch curves.png"
    return Plan(config, reasons)
