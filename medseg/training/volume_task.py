"""The volume task: loaders, whole-volume validation and previews for ``data.kind: volumes3d | slices2d``.

volumes3d trains a 3D network on random patches (``data.patch_size``) and validates with a sliding window over
whole preprocessed validation volumes. slices2d trains a 2D network on slices along ``data.slice_axis`` of the
same preprocessed volumes (crops of ``data.patch_size[:2]``) and validates slice by slice, reassembled into
volumes. Metrics are computed on the preprocessed grid with its real voxel spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config.kinds import DataKind
from medseg.config.schema import ExperimentConfig
from medseg.data.augmentation import build_train_transforms
from medseg.data.label_discovery import check_class_presence, discover_label_map
from medseg.data.label_sources import label_map_from_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.preprocessed_cache import cache_dir_for, cached_cases
from medseg.data.splits import split_for_run
from medseg.data.volume_dataset import PatchDataset, PreparedCase, prepare_cases
from medseg.data.volume_preprocessing import VolumePreprocessor, slice_axis_index
from medseg.errors import ConfigError
from medseg.io.volume_io import read_volume
from medseg.metrics.case_metrics import compute_case_metrics
from medseg.metrics.confusion import confusion_matrix
from medseg.prediction.network import infer_prepared
from medseg.seeds import epoch_seed
from medseg.training.distributed import Share, epoch_batches, loader_generator

__all__ = ["VolumeTask"]

log = logging.getLogger(__name__)


def _read_label_array(path: Any) -> np.ndarray:
    return read_volume(path).array


def _example_slice(image: torch.Tensor, label: torch.Tensor, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The last-axis slice with the most true foreground: uint8 image (min-max scaled), truth and prediction."""
    k = int((label > 0).flatten(0, 1).sum(0).argmax())
    img = image[..., k]
    lo, hi = float(img.min()), float(img.max())
    return {"image": ((img - lo) / max(hi - lo, 1e-6) * 255).round().to(torch.uint8).numpy(),
            "truth": label[..., k].numpy(), "pred": pred[..., k]}


class VolumeTask:
    """Everything the training loop needs to know about volume data (3D patches or 2D slices); a
    :class:`~medseg.training.task.Task`.

    Args:
        cfg: The experiment (``data.kind`` volumes3d or slices2d).
        run_dir: The run folder (splits are saved in ``run_dir/splits``).
        labels: The label map (on resume), else from ``data.labels.classes`` or discovered from the label volumes.
        resume: Reuse the saved split.

    Raises:
        ConfigError: Patch size that does not fit the kind or the network.
        DataError: Missing or mismatched volumes, unknown label values.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, labels: LabelMap | None, resume: bool,
                 write: bool = True) -> None:
        self.cfg = cfg
        d = cfg.data
        self.kind = DataKind(d.kind)
        self.spatial_dims = self.kind.spatial_dims
        self.patch_size = self._patch_size()
        pairs = find_pairs_from_config(d)
        self.train_pairs, self.val_pairs = split_for_run(pairs, d, run_dir, resume=resume, write=write)
        self.labels: LabelMap = labels or label_map_from_config(d.labels) or discover_label_map(
            [p.mask for p in self.train_pairs + self.val_pairs], tolerance=0, read=_read_label_array
        )
        self.preprocessor = VolumePreprocessor.from_config(d)
        self.in_channels = self.preprocessor.in_channels
        self.train_cases, self.val_cases = self._prepare(d.labels.tolerance)
        check_class_presence({c for case in self.train_cases for c in case.foreground}, self.labels,
                             num_masks=len(self.train_cases))
        self.transform = build_train_transforms(d.augment, spatial_dims=self.spatial_dims)
        self.slice_axis = slice_axis_index(d.orientation, d.slice_axis) if self.kind is DataKind.SLICES2D else None
        log.info("%s data: %d training and %d validation volumes, grid shapes %s", d.kind, len(self.train_cases),
                 len(self.val_cases), [c.grid.shape_out for c in self.train_cases[:4]])

    def _prepare(self, tolerance: int) -> tuple[list[PreparedCase], list[PreparedCase]]:
        """Training and validation cases: memory-mapped from the preprocessed cache (built where missing), or read
        into memory with ``data.cache: false``."""
        root = cache_dir_for(self.cfg.data)
        pairs = self.train_pairs + self.val_pairs
        if root is None:
            log.info("data.cache is off: preprocessing %d volumes into memory", len(pairs))
            cases = prepare_cases(pairs, self.preprocessor, self.labels, tolerance=tolerance)
        else:
            dist = torch.distributed
            share = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
                else (0, 1)
            cases, report = cached_cases(pairs, self.preprocessor, self.labels, root=root, tolerance=tolerance,
                                         share=share)
            log.info("preprocessed cache: reused %d cached cases, built %d (%s)", len(report.reused),
                     len(report.built), report.folder)
        n = len(self.train_pairs)
        return cases[:n], cases[n:]

    def _patch_size(self) -> tuple[int, ...]:
        d, m = self.cfg.data, self.cfg.model
        patch = tuple(d.patch_size)
        if len(patch) == 1:
            patch = patch * self.spatial_dims
        if len(patch) < self.spatial_dims or (self.spatial_dims == 3 and len(patch) != 3):
            raise ConfigError(f"data.patch_size: {d.kind} needs {self.spatial_dims} sizes, got {list(d.patch_size)}")
        patch = patch[: self.spatial_dims]
        bad = [n for n in patch if n % m.divisor]
        if bad:
            fixed = [-(-n // m.divisor) * m.divisor for n in patch]
            raise ConfigError(
                f"data.patch_size: {list(patch)} must be multiples of {m.divisor} (the product of model.strides); "
                f"use {fixed}"
            )
        return patch

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What a predictor must do to a volume (stored in the checkpoint)."""
        return {**self.preprocessor.settings, "kind": self.kind.value, "patch_size": list(self.patch_size),
                "slice_axis": self.cfg.data.slice_axis}

    def _dataset(self, seed: int) -> PatchDataset:
        d = self.cfg.data
        patch: tuple[int, ...] = self.patch_size
        if self.slice_axis is not None:
            patch = (*patch[: self.slice_axis], 1, *patch[self.slice_axis:])
        return PatchDataset(
            self.train_cases, patch_size=patch, samples_per_volume=d.samples_per_volume,
            foreground_fraction=d.foreground_fraction, seed=seed, transform=self.transform,
            squeeze_axis=self.slice_axis,
        )

    def train_loader(self, epoch: int, share: Share) -> torch.utils.data.DataLoader:
        """This process's micro-batches of random patches; positions, order and augmentation depend only on
        (seed, epoch) (patch ``i`` is augmented from ``(seed, epoch, i)``)."""
        dataset = self._dataset(epoch_seed(self.cfg.train.seed, epoch))
        batches = epoch_batches(len(dataset), self.cfg.train.batch_size, self.cfg.train.seed, epoch, share)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                                           persistent_workers=False,
                                           generator=loader_generator(self.cfg.train.seed, epoch),
                                           pin_memory=self.cfg.train.device != "cpu" and torch.cuda.is_available())

    def augment_batch(self, image: torch.Tensor, label: torch.Tensor, epoch: int, indices: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch unchanged: volume patches are augmented per sample in the loader (MONAI transforms)."""
        return image, label

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device, *,
                 rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """Loss, per-class metrics and confusion matrices of whole preprocessed validation volumes (sliding window,
        no TTA), volumes ``rank, rank + world_size, ...``; rank 0 adds the slice of the first volume with the most
        foreground (``"example"``: 2D arrays)."""
        if not self.val_cases:
            return {}
        model.eval()
        infer = self.cfg.infer.model_copy(update={"tta": False})
        settings = self.preprocessing
        tiling = "auto"  # the engine falls back to roi windows for instance/group norm
        losses, cases, confusions = [], [], []
        example: dict[str, np.ndarray] = {}
        mine = list(range(rank, len(self.val_cases), world_size))
        for case in (self.val_cases[i] for i in mine):
            logits = infer_prepared(model, case.image.float(), settings, infer, device, output="logits",
                                    tiling=tiling)
            label = case.label.long()
            losses.append(float(loss_fn(logits[None].to(device), label[None, None].to(device))))
            pred = logits.argmax(0).numpy()
            cases.append(compute_case_metrics(
                pred, label.numpy(), self.labels.num_classes,
                spacing=case.grid.spacing_out, class_names=list(self.labels.names),
            ))
            confusions.append(confusion_matrix(pred, label.numpy(), self.labels.num_classes))
            if not example:
                example = _example_slice(case.image[0].float(), label, pred)
        return {"val_loss": float(np.mean(losses)) if losses else 0.0, "weight": len(mine), "cases": cases,
                "confusions": confusions, "case_index": mine, "example": example}

    def preview(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Up to ``n`` augmented training patches as uint8 slices (the slice with most foreground) and class maps."""
        dataset = self._dataset(self.cfg.train.seed)
        images, masks = [], []
        for i in range(min(n, len(dataset))):
            item = dataset[i]
            image, label = item["image"][0], item["label"][0]
            if image.ndim == 3:
                k = int((label > 0).flatten(0, 1).sum(0).argmax())
                image, label = image[:, :, k], label[:, :, k]
            lo, hi = float(image.min()), float(image.max())
            images.append(((image - lo) / max(hi - lo, 1e-6) * 255).round().to(torch.uint8).numpy())
            masks.append(label.numpy())
        return images, masks
