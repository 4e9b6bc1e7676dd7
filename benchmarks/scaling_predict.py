"""Prediction throughput (cases/min) on 1 and N worker processes of this machine, and the scaling efficiency.

Run from the repository root: ``python benchmarks/scaling_predict.py [--cases 8] [--workers 1 2] [--repeats 3]``.
A small 3D UNet (channels 8-16-32) is trained for one epoch on synthetic spine phantoms (64x64x64 voxels at
1.5 mm), then ``predict_paths`` segments ``--cases`` such volumes into a fresh folder, ``--repeats`` times per
worker count. One worker runs in this process with every core's torch threads; N > 1 workers are spawned
processes with ``cores // N`` threads each (what ``medseg predict --workers N`` does), so both use all cores.
The time of N > 1 includes starting the workers (spawn, importing torch, loading the model): that is what a user
waits for. That fixed cost is also measured alone (the same run again, every case then skipped), and the
throughput without it is printed too. Prints the median throughput per worker count and the efficiency
``throughput(N) / (N x throughput(1))``. Medians of one run on a shared machine: noisy; compare ratios measured
in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.config.loading import validate_config  # noqa: E402
from medseg.data.synthetic.spine import make_spine_dataset  # noqa: E402
from medseg.prediction.batch import predict_paths  # noqa: E402
from medseg.prediction.predictor import Predictor  # noqa: E402
from medseg.training.loop import train  # noqa: E402


def _checkpoint(tmp: Path, cases: int) -> tuple[Path, Path]:
    root = make_spine_dataset(tmp / "data", n_cases=max(cases, 2), shape=(64, 64, 64), spacing=(1.5, 1.5, 1.5),
                              n_vertebrae=3)
    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(root), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "val_fraction": 0.25, "labels": {"classes": classes}, "windows": ["bone"],
                 "spacing_mm": [1.5, 1.5, 1.5], "patch_size": [32, 32, 32], "samples_per_volume": 1},
        "model": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "infer": {"roi_size": [64, 64, 64], "overlap": 0.25},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint, root / "imagesTr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ckpt, images = _checkpoint(tmp, args.cases)
        predictor = Predictor.from_checkpoint(ckpt, device="cpu")
        inputs = sorted(images.iterdir())[: args.cases]
        print(f"{len(inputs)} cases of 64x64x64 voxels, {cores} cores, torch {torch.__version__}")
        rates: dict[int, float] = {}
        steady: dict[int, float] = {}
        for n in args.workers:
            torch.set_num_threads(cores)
            runs = []
            for r in range(args.repeats):
                out = tmp / f"out-{n}-{r}"
                start = time.perf_counter()
                report = predict_paths(predictor, inputs, out, workers=n, progress=False)
                runs.append(time.perf_counter() - start)
                assert len(report.predicted) == len(inputs) and report.ok, report
            fixed = []
            for r in range(args.repeats):  # every case finished: only starting the workers and skipping
                start = time.perf_counter()
                report = predict_paths(predictor, inputs, tmp / f"out-{n}-{r}", workers=n, progress=False)
                fixed.append(time.perf_counter() - start)
                assert len(report.skipped) == len(inputs), report
            total, start_s = statistics.median(runs), statistics.median(fixed)
            rates[n] = len(inputs) / total * 60
            steady[n] = len(inputs) / max(total - start_s, 1e-9) * 60
            threads = cores if n == 1 else max(1, cores // n)
            print(f"workers {n} ({threads} torch thread(s) each): median {total:.1f} s over {args.repeats} runs "
                  f"({', '.join(f'{t:.1f}' for t in runs)}), {rates[n]:.1f} cases/min; start-up alone "
                  f"{start_s:.1f} s, without it {steady[n]:.1f} cases/min")
        for label, table in (("with start-up", rates), ("without start-up", steady)):
            base = table.get(1)
            for n, rate in table.items():
                if base and n > 1:
                    print(f"{label}: speed-up {n} workers vs 1: {rate / base:.2f}x, efficiency "
                          f"{rate / (n * base):.2f}")


if __name__ == "__main__":
    main()
