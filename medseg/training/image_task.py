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
from medseg.data.image_dataset import ImageMaskDataset, read_mask_gray
from medseg.data.label_discovery import discover_label_map
from medseg.data.label_sources import label_map_from_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.splits import split_for_run
from medseg.metrics.case_metrics import compute_case_metrics
from medseg.seeds import epoch_seed, substream_seed

log = logging.getLogger(__name__)


class ImageTask:
    """Everything the training loop needs to know about 2D image/mask data (a :class:`~medseg.training.task.Task`).

    Raises:
        DataError: Missing or unpaired files, unreadable images, unknown mask values.
    """

    spatial_dims = 2

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, labels: LabelMap | None, resume: bool) -> None:
        self.cfg = cfg
        pairs = find_pairs_from_config(cfg.data)
        self.train_pairs, self.val_pairs = split_for_run(pairs, cfg.data, run_dir, resume=resume)
        self.labels: LabelMap = labels or label_map_from_config(cfg.data.labels) or discover_label_map(
            [p.mask for p in self.train_pairs], tolerance=cfg.data.labels.tolerance, read=read_mask_gray
        )
        self.in_channels = 3 if cfg.data.color == "rgb" else 1
        self.augment = BatchAugment(cfg.data.augment, spatial_dims=2)
        self.train_set = ImageMaskDataset(self.train_pairs, cfg=cfg.data, labels=self.labels)
        self.val_set = ImageMaskDataset(self.val_pairs, cfg=cfg.data, labels=self.labels) if self.val_pairs else None
        log.info("2D data: %d training and %d validation cases", len(self.train_pairs), len(self.val_pairs))

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What a predictor must do to an image file (stored in the checkpoint)."""
        d = self.cfg.data
        return {"kind": DataKind.IMAGES2D.value, "color": d.color, "image_size": list(d.image_size),
                "scale": 1.0 / 255.0}

    def train_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """A shuffled loader of cached, un-augmented samples; the order depends only on (seed, epoch)."""
        from monai.data import DataLoader

        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.train.seed, epoch))
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) > self.cfg.train.batch_size,
            num_workers=self.cfg.data.num_workers,
            generator=gen,
            persistent_workers=False,
            pin_memory=self.cfg.train.device != "cpu" and torch.cuda.is_available(),  # non-blocking copies to CUDA
        )

    @torch.no_grad()
    def augment_batch(self, image: torch.Tensor, label: torch.Tensor, epoch: int, step: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch on its device; the draws depend only on (seed, epoch, step)."""
        seed = substream_seed(epoch_seed(self.cfg.train.seed, epoch), step, bits=63)
        return self.augment(image, label, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        """Loss and per-class metrics on whole validation images (at the training size)."""
        if self.val_set is None:
            return {}
        model.eval()
        losses, cases = [], []
        bs = max(1, self.cfg.train.batch_size)
        for start in range(0, len(self.val_set), bs):
            items = [self.val_set[i] for i in range(start, min(start + bs, len(self.val_set)))]
            image = torch.stack([it["image"] for it in items]).to(device)
            label = torch.stack([it["label"] for it in items]).to(device)
            logits = model(image).float()
            losses.append(float(loss_fn(logits, label)) * len(items))
            pred = logits.argmax(1).cpu().numpy()
            for p, t in zip(pred, label[:, 0].cpu().numpy(), strict=True):
                cases.append(
                    compute_case_metrics(p, t, self.labels.num_classes, class_names=list(self.labels.names))
                )
        return {"val_loss": sum(losses) / len(self.val_set), "cases": cases}

    def preview(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Up to ``n`` augmented training samples as uint8 images and class maps."""
        items = [self.train_set[i] for i in range(min(n, len(self.train_set)))]
        if not items:
            return [], []
        image, label = self.augment_batch(torch.stack([it["image"] for it in items]),
                                          torch.stack([it["label"] for it in items]), -1, 0)
        images, masks = [], []
        for img_t, lab_t in zip(image, label, strict=True):
            img = (img_t.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
            images.append(img[..., 0] if img.shape[-1] == 1 else img)
            masks.append(lab_t[0].numpy())
        return images, masks
