"""Peak memory of predicting one volume with one model and with ensembles of 2, 3 and 5 members.

Usage: python benchmarks/ensemble_memory.py [--size 192] [--repeats 2]

A tiny volumes3d UNet (4 classes) is trained for one epoch on synthetic spine phantoms, then each run predicts a
random CT-like volume of SIZE^3 voxels at the model's spacing (so the prepared volume is SIZE^3) in its own
process, with 1 torch thread; members are the same checkpoint loaded again. Prints one JSON line per run (peak
RSS as VmHWM, seconds) and the size of one float32 class-probability map of the prepared volume: an ensemble
that held every member's map would grow by one map per member, the running sum by one map in all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's medseg


def _vm_hwm_mb() -> float:
    """Peak RSS of this process (ru_maxrss would also count the parent's RSS at fork)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _train(root: Path) -> Path:
    from medseg.config.loading import validate_config
    from medseg.data.synthetic.spine import make_spine_dataset
    from medseg.training.loop import train

    data = make_spine_dataset(root / "data", n_cases=2, shape=(24, 24, 32), spacing=(3.0, 3.0, 3.0), n_vertebrae=3)
    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(data), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "val_fraction": 0.5, "labels": {"classes": classes}, "windows": ["bone"],
                 "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [16, 16, 16], "samples_per_volume": 1},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=root / "run", progress=False).last_checkpoint


def _child(ckpt: str, members: int, size: int) -> None:
    import numpy as np
    import torch

    from medseg.io.volume import Volume
    from medseg.prediction.ensemble import Ensemble
    from medseg.prediction.predictor import Predictor

    torch.set_num_threads(1)
    model = (Predictor.from_checkpoint(ckpt, device="cpu") if members == 1
             else Ensemble.from_checkpoints([ckpt] * members, device="cpu"))
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(300, 200, (size,) * 3).astype(np.int16), np.diag([6.0, 6.0, 6.0, 1.0]))
    before = _vm_hwm_mb()
    start = time.perf_counter()
    model.predict(volume)
    print(json.dumps({"members": members, "peak_mb_before_predict": round(before), "peak_mb": round(_vm_hwm_mb()),
                      "seconds": round(time.perf_counter() - start, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.size)
        return
    with tempfile.TemporaryDirectory(prefix="medseg-ensemble-") as tmp:
        ckpt = _train(Path(tmp))
        for _ in range(args.repeats):
            for members in (1, 2, 3, 5):
                done = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", str(ckpt),
                                       str(members)], capture_output=True, text=True, check=False)
                print(done.stdout.strip() or done.stderr[-2000:], flush=True)
    print(f"one float32 probability map of the prepared volume, 4 classes: {4 * 4 * args.size**3 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
