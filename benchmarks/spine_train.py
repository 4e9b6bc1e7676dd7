"""Benchmark: train configs/spine.yaml on the shared spine CT, validate per vertebra, report time.

Training case: ../shared/data/spine-ct-totalseg (TotalSegmentator ids 26..33, S1..T11, RAS, 3 mm).
Validation case: ../shared/data/spine-ct-verse-cutout (another scan, VerSe ids 21..23 = L2..L4, P-I-R, 1.5 mm),
read through the same config, whose classes accept both id conventions. Only 2 real cases exist, so the
validation figure is a generalisation check on one small crop, not a benchmark score; the fit on the
training case is printed too.

Prints one line per figure: settings, wall time, per-vertebra Dice on the validation cutout (classes present
there), per-vertebra Dice on the training case (fit).

Usage:
    python benchmarks/spine_train.py [--epochs 40] [--set data.spacing_mm=[3,3,3] ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _dataset(folder: Path) -> Path:
    """imagesTr/labelsTr symlinks to the two real cases, plus split lists."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = {
        "totalseg": (SHARED / "spine-ct-totalseg" / "example_ct.nii.gz",
                     SHARED / "spine-ct-totalseg" / "totalseg_vertebrae.nii.gz"),
        "verse": (SHARED / "spine-ct-verse-cutout" / "sub-ct_label-22_ct.nii.gz",
                  SHARED / "spine-ct-verse-cutout" / "sub-ct_seg-vert_label-22_msk.nii.gz"),
    }
    for name, (image, label) in cases.items():
        (folder / "imagesTr" / f"{name}.nii.gz").symlink_to(image)
        (folder / "labelsTr" / f"{name}.nii.gz").symlink_to(label)
    (folder / "train.txt").write_text("totalseg\n")
    (folder / "val.txt").write_text("verse\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"error: shared data not found at {SHARED}", file=sys.stderr)
        return 1

    import numpy as np

    import medseg
    from medseg.metrics.case_metrics import compute_case_metrics

    work = Path(tempfile.mkdtemp(prefix="spine-bench-"))
    data = _dataset(work / "data")
    overrides = [
        f"data.root={data}", f"data.train_list={data / 'train.txt'}", f"data.val_list={data / 'val.txt'}",
        "data.spacing_mm=[3.0, 3.0, 3.0]", "data.patch_size=[64, 64, 64]", "data.samples_per_volume=8",
        "model.channels=[16, 32, 64, 128]", "model.strides=[2, 2, 2]", "train.batch_size=2",
        f"train.max_epochs={args.epochs}", "train.val_every=5", "train.early_stopping_patience=null",
        "train.lr=0.003", "train.device=cpu", *args.sets,
    ]
    cfg = medseg.load_config(REPO / "configs" / "spine.yaml", overrides)
    t0 = time.perf_counter()
    result = medseg.train(cfg, run_dir=work / "run", progress=False)
    train_s = time.perf_counter() - t0
    predictor = medseg.Predictor.from_checkpoint(result.best_checkpoint or result.last_checkpoint, device="cpu")
    print(f"settings: spacing {list(cfg.data.spacing_mm)} mm, patch {list(cfg.data.patch_size)}, channels "
          f"{list(cfg.model.channels)}, {cfg.train.max_epochs} epochs x {cfg.data.samples_per_volume} patches, CPU")
    print(f"training wall time: {train_s / 60:.1f} min "
          f"(best val Dice {result.best_metric} at epoch {result.best_epoch})")
    for case in ("verse", "totalseg"):
        image = data / "imagesTr" / f"{case}.nii.gz"
        truth = medseg.read_volume(data / "labelsTr" / f"{case}.nii.gz")
        t1 = time.perf_counter()
        pred = predictor.predict(image)
        pred_s = time.perf_counter() - t1
        labels = predictor.labels
        p_cls, _ = labels.to_class(np.asarray(pred.array))
        t_cls, _ = labels.to_class(np.rint(truth.array).astype(np.int64))
        metrics = compute_case_metrics(p_cls, t_cls, labels.num_classes, spacing=truth.spacing,
                                       class_names=list(labels.names))
        present = [n for i, n in enumerate(labels.names) if i > 0 and (t_cls == i).any()]
        dice = ", ".join(f"{n} {metrics[n]['dice']:.3f}" for n in present)
        role = "validation (VerSe cutout, unseen scan)" if case == "verse" else "training case (fit)"
        print(f"Dice per vertebra, {role}: {dice}; mean {np.mean([metrics[n]['dice'] for n in present]):.3f}; "
              f"predict {pred_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
