"""Benchmark: train configs/kvasir.yaml on the shared Kvasir-SEG pairs on CPU; report Dice and time.

Prints one line per figure:
- the validation split (30 of 150 images, fixed by data.seed) and the device;
- best validation Dice (polyp) and the epoch it was reached, total wall time (target: Dice >= 0.75 within 20 min);
- the Dice reached within the first 20 minutes of training (from the per-epoch log);
- data-loading overhead: median over epochs of epoch time / pure compute time of the same steps (target <= 1.15).

Usage:
    python benchmarks/kvasir_train.py [--data ../shared/data/kvasir-seg] [--set train.max_epochs=60 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "kvasir-seg")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "kvasir.yaml")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()

    import torch

    import medseg

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"error: Kvasir-SEG folder {args.data} not found", file=sys.stderr)
        return 1
    cfg = medseg.load_config(args.config, [f"data.root={args.data.resolve()}", *args.sets])
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="kvasir-bench-")) / "run"
    t0 = time.perf_counter()
    result = medseg.train(cfg, run_dir=run_dir, progress=False)
    wall = time.perf_counter() - t0
    records = json.loads((run_dir / "log.json").read_text())
    n_val = len((run_dir / "splits" / "val.txt").read_text().split())
    n_train = len((run_dir / "splits" / "train.txt").read_text().split())

    elapsed, dice_20 = 0.0, None
    for r in records:
        elapsed += r["epoch_time_s"] + r.get("val_time_s", 0.0)
        if elapsed <= 20 * 60 and r.get("val_dice") is not None:
            dice_20 = max(dice_20 or 0.0, r["val_dice"])
    ratios = [r["epoch_time_s"] / r["compute_time_s"] for r in records if r["compute_time_s"] > 0]

    print(
        f"split: {n_train} train / {n_val} val images (data.seed={cfg.data.seed}), image_size "
        f"{list(cfg.data.image_size)}, device {cfg.train.device} -> "
        f"{'cuda' if torch.cuda.is_available() and cfg.train.device != 'cpu' else 'cpu'}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"best val Dice (polyp): {result.best_metric:.4f} at epoch {result.best_epoch}/{len(records)}; "
        f"total wall time {wall / 60:.1f} min (target: Dice >= 0.75 within 20 min)"
    )
    print(f"val Dice reached within the first 20 min of training: {dice_20 if dice_20 is None else round(dice_20, 4)}")
    print(
        f"data-loading overhead: median epoch time / compute time = {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 1.15)"
    )
    print(f"median epoch time {statistics.median(r['epoch_time_s'] for r in records):.1f} s; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
