"""The 2D image task: data loaders, whole-image validation and previews for ``data.kind: images2d``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config.kinds import DataKind
from medseg.config.schema import ExperimentConfig
from medseg.data.augmentation import BatchAugment
from medseg.data.image_dataset import ImageMaskDataset, read_mask_gray, training_intensity
from medseg.data.label_discovery import check_class_presence, discover_label_map
from medseg.data.label_sources import label_map_from_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.splits import split_for_run
from medseg.metrics.case_metrics import compute_case_metrics
from medseg.metrics.confusion import confusion_matrix
from medseg.models.outputs import main_output
from medseg.seeds import epoch_seed, substream_seed
from medseg.training.distributed import Share, epoch_batches, loader_generator

log = logging.getLogger(__name__)


class ImageTask:
    """Everything the training loop needs to know about 2D image/mask data (a :class:`~medseg.training.task.Task`).

    Raises:
        DataError: Missing or unpaired files, unreadable images, unknown mask values.
    """

    spatial_dims = 2

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, labels: LabelMap | None, resume: bool,
                 write: bool = True) -> None:
        self.cfg = cfg
        pairs = find_pairs_from_config(cfg.data)
        self.train_pairs, self.val_pairs = split_for_run(pairs, cfg.data, run_dir, resume=resume, write=write)
        self.labels: LabelMap = labels or label_map_from_config(cfg.data.labels) or discover_label_map(
            [p.mask for p in self.train_pairs], tolerance=cfg.data.labels.tolerance, read=read_mask_gray
        )
        self.intensity = training_intensity(self.train_pairs, cfg.data)
        self.in_channels = self.intensity.in_channels
        self.augment = BatchAugment(cfg.data.augment, spatial_dims=2)
        self.train_set = ImageMaskDataset(self.train_pairs, cfg=cfg.data, labels=self.labels, intensity=self.intensity)
        self.val_set = ImageMaskDataset(self.val_pairs, cfg=cfg.data, labels=self.labels,
                                        intensity=self.intensity) if self.val_pairs else None
        present: set[int] = set()
        for i in range(len(self.train_set)):
            present.update(torch.unique(self.train_set.sample(i).label).tolist())
        check_class_presence(present, self.labels, num_masks=len(self.train_set))
        log.info("2D data: %d training and %d validation cases", len(self.train_pairs), len(self.val_pairs))

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What a predictor must do to an image file (stored in the checkpoint)."""
        d = self.cfg.data
        return {"kind": DataKind.IMAGES2D.value, "color": d.color, "image_size": list(d.image_size),
                **self.intensity.settings}

    def train_loader(self, epoch: int, share: Share) -> torch.utils.data.DataLoader:
        """This process's micro-batches of cached, un-augmented samples (order: seed and epoch only)."""
        from monai.data import DataLoader

        batches = epoch_batches(len(self.train_set), self.cfg.train.batch_size, self.cfg.train.seed, epoch, share)
        return DataLoader(IndexedDataset(self.train_set), batch_sampler=batches,
                          num_workers=self.cfg.data.num_workers, persistent_workers=False,
                          generator=loader_generator(self.cfg.train.seed, epoch),
                          pin_memory=self.cfg.train.device != "cpu" and torch.cuda.is_available())  # non-blocking

    @torch.no_grad()
    def augment_batch(self, image: torch.Tensor, label: torch.Tensor, epoch: int, indices: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch on its device; sample ``i``'s draws depend only on (seed, epoch, indices[i])."""
        seed = epoch_seed(self.cfg.train.seed, epoch)
        gens = [torch.Generator().manual_seed(substream_seed(seed, int(i), bits=63)) for i in indices]
        return self.augment(image, label, gens)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device, *,
                 rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """Loss, per-class metrics and confusion matrices of whole validation images (at the training size), this
        rank's share, and its first image with its truth and prediction (``"example"``: 2D arrays for TensorBoard)."""
        if self.val_set is None:
            return {}
        model.eval()
        losses, cases, confusions = [], [], []
        example: dict[str, np.ndarray] = {}
        bs = max(1, self.cfg.train.batch_size)
        mine = list(range(rank, len(self.val_set), world_size))
        for start in range(0, len(mine), bs):
            items = [self.val_set[i] for i in mine[start:start + bs]]
            image = torch.stack([it["image"] for it in items]).to(device)
            label = torch.stack([it["label"] for it in items]).to(device)
            logits = main_output(model(image)).float()
            losses.append(float(loss_fn(logits, label)) * len(items))
            pred = logits.argmax(1).cpu().numpy()
            if not example:
                img = image[0].float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                example = {"image": img[..., 0] if img.shape[-1] == 1 else img,
                           "truth": label[0, 0].cpu().numpy(), "pred": pred[0]}
            k = self.labels.num_classes
            for p, t in zip(pred, label[:, 0].cpu().numpy(), strict=True):
                cases.append(compute_case_metrics(p, t, k, class_names=list(self.labels.names)))
                confusions.append(confusion_matrix(p, t, k))
        return {"val_loss": sum(losses) / max(1, len(mine)), "weight": len(mine), "cases": cases,
                "confusions": confusions, "case_index": mine, "example": example}

    def preview(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Up to ``n`` augmented training samples as uint8 images and class maps."""
        items = [self.train_set[i] for i in range(min(n, len(self.train_set)))]
        if not items:
            return [], []
        image, label = self.augment_batch(torch.stack([it["image"] for it in items]),
                                          torch.stack([it["label"] for it in items]), -1,
                                          torch.arange(len(items)))
        images, masks = [], []
        for img_t, lab_t in zip(image, label, strict=True):
            img = (img_t.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
            images.append(img if img.shape[-1] == 3 else img[..., 0])  # CT windows: the first one
            masks.append(lab_t[0].numpy())
        return images, masks


class IndexedDataset(torch.utils.data.Dataset):
    """A dataset of dict items with each item's index added (``"index"``), for per-sample augmentation seeds."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "index": index}
