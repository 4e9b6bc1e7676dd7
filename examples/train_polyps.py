"""Train a small 2D polyp model on synthetic data from Python, then segment one image.

Run: python examples/train_polyps.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import medseg

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-polyps")
data = medseg.make_polyp_dataset(out / "data", n=16, size=(64, 80), seed=0, overwrite=True)

cfg = medseg.validate_config({
    "data": {"root": str(data), "image_size": [64, 80],
             "labels": {"classes": {0: "background", 255: "polyp"}}},
    "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "train": {"max_epochs": 2, "batch_size": 4, "lr": 0.005, "device": "cpu"},
})
result = medseg.train(cfg, run_dir=out / "run", overwrite=True)
print("best checkpoint:", result.best_checkpoint)

predictor = medseg.Predictor.from_checkpoint(result.best_checkpoint)
image = sorted((data / "images").glob("*.png"))[0]
mask = predictor.predict(image)  # full-size mask in the original gray values
print("mask:", mask.shape, "values:", sorted(np.unique(mask).tolist()))
