"""medseg transforms inside a plain MONAI Compose: stacked CT windows and gray-value label mapping.

Uses a synthetic spine CT phantom (HU values, vertebra labels 26..30) that medseg writes itself.
Run: python examples/ct_transforms.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

import medseg

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-ct")
out.mkdir(parents=True, exist_ok=True)
image, label = medseg.make_spine_phantom(out / "ct.nii.gz", out / "labels.nii.gz", shape=(48, 48, 64))

labels = medseg.LabelMap.from_classes(
    [("background", [0]), ("S1", [26]), ("L5", [27]), ("L4", [28]), ("L3", [29]), ("L2", [30])]
)
pipeline = Compose([
    LoadImaged(["image", "label"]),
    EnsureChannelFirstd(["image", "label"]),
    medseg.CTWindowd("image", windows=["bone", "soft_tissue"]),  # 1 HU channel -> 2 channels in 0..1
    medseg.MapLabelsd("label", labels),                            # 0, 26..30 -> classes 0..5
])
sample = pipeline({"image": str(image), "label": str(label)})
print(*pipeline.transforms, sep="\n")
print("image:", tuple(sample["image"].shape), "range", float(sample["image"].min()), float(sample["image"].max()))
print("classes:", torch.unique(torch.as_tensor(sample["label"])).tolist())
back = labels.to_values(torch.as_tensor(sample["label"]))
print("back to label values:", torch.unique(back).tolist())
