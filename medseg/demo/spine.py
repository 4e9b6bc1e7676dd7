"""The spine part of ``medseg demo``: a synthetic CT phantom data set and a small 3D UNet config.

The phantom (:func:`medseg.data.synthetic.spine.make_spine_dataset`) holds five vertebrae labelled with
TotalSegmentator ids 26..30 (S1, L5, L4, L3, L2). At 3 mm the whole column fits in one 32 x 32 x 48 patch,
so the network sees the context that tells one vertebra from the next, and a few epochs on two CPU cores
give a clearly non-trivial Dice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.data.splits import split_pairs
from medseg.data.synthetic.spine import make_spine_dataset

__all__ = ["SPINE_DEMO_CONFIG", "spine_demo_config", "write_spine_demo_data"]

#: Vertebrae of the phantom, most inferior first (TotalSegmentator v2 ids).
_VERTEBRAE = [("S1", 26), ("L5", 27), ("L4", 28), ("L3", 29), ("L2", 30)]

SPINE_DEMO_CONFIG: dict[str, Any] = {
    "data": {
        "kind": "volumes3d", "root": "data", "images_dir": "imagesTr", "masks_dir": "labelsTr",
        "val_fraction": 0.2, "seed": 0,
        "labels": {"classes": [{"name": "background", "values": [0]}]
                   + [{"name": n, "values": [v]} for n, v in _VERTEBRAE]},
        "windows": ["spine", "soft_tissue"], "intensity": "ct_window",
        "spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
        "patch_size": [32, 32, 48], "samples_per_volume": 2, "foreground_fraction": 0.67,
        "augment": {"flip": False, "rotate_degrees": 5, "scale": 0.05, "probability": 0.3},
    },
    "model": {"spatial_dims": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "loss": {"name": "dice_ce"},
    "train": {"max_epochs": 25, "batch_size": 2, "lr": 0.003, "device": "auto", "preview_samples": 4,
              "scheduler": {"name": "cosine", "warmup_epochs": 1}},
    "infer": {"overlap": 0.25, "sw_batch_size": 2},
}


def spine_demo_config() -> dict[str, Any]:
    """The raw (unvalidated) experiment dict of the spine demo; ``data.root`` is set by the caller."""
    import copy

    return copy.deepcopy(SPINE_DEMO_CONFIG)


def write_spine_demo_data(folder: str | Path, *, n_cases: int = 10, seed: int = 0) -> tuple[Path, Path, list[Path]]:
    """Write the synthetic spine CT cases (nnU-Net layout) into ``folder``.

    Returns:
        ``(data_dir, labels_dir, images)``: the data root, its ``labelsTr`` folder, and the image files of
        the validation split that training will draw from the config's ``val_fraction`` and ``seed`` (the
        same :func:`~medseg.data.splits.split_pairs` call over the same sorted case names).
    """
    root = make_spine_dataset(Path(folder), n_cases=n_cases, shape=(64, 64, 96), spacing=(1.5, 1.5, 1.5),
                              n_vertebrae=len(_VERTEBRAE), first_label=_VERTEBRAE[0][1], seed=seed)
    images = sorted((root / "imagesTr").glob("*.nii.gz"))
    data = SPINE_DEMO_CONFIG["data"]
    _, val = split_pairs(images, val_fraction=data["val_fraction"], seed=data["seed"])
    return root, root / "labelsTr", val
