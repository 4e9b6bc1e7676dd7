"""Benchmark: plan Kvasir-SEG, train 5 folds at the planned settings, and compare the 5-fold ensemble with the
best single fold on the fixed 30-image validation split.

Data: the shared Kvasir-SEG pairs (150 images). The validation split is the one ``configs/kvasir.yaml`` fixes
(``data.val_fraction: 0.2``, ``data.seed: 0``: 30 images, as benchmarks/kvasir_train.py); only the other 120
images are planned and cross-validated. Everything runs through the CLI (``python -m medseg``), in a temporary
folder of symlinks (the data is never copied).

Steps and the lines printed (one per figure):
1. ``medseg plan`` on the 120 training images: the planned image size, network and batch.
2. A 2-epoch probe at the planned settings times an epoch; ``--minutes`` per fold becomes ``train.max_epochs``.
3. ``medseg train PLAN --set data.folds=5 --fold all``: each fold's own validation Dice and wall time, and the
   cross-validation Dice over the union of the 120 cases (``cv_metrics.summary.json``).
4. Each fold predicts the 30 validation images (``medseg predict RUN/fold_K``): Dice of each; the best single
   fold is the one with the best Dice on its own fold's validation cases (chosen without the 30).
5. The 5-fold ensemble (``medseg predict RUN VAL -o OUT``: the folds' parent folder as the checkpoint) on the same
   30 images, and its difference to the best single fold. A build without ensembles prints
   ``ensemble: not available in this build``.
6. ``medseg postprocess-select`` (after the predictions, which it would otherwise change): the CV Dice before and
   after the chosen option.

The machine is shared: wall times are noisy. Do not run the full benchmark on a shared 2-core machine; ``--smoke``
checks the code only: 20 training images, 4 validation images, 64x64, one epoch per fold, no TTA (about 15 min
on the shared 2-core machine, mostly process start-up and full-size predictions).

Usage:
    python benchmarks/plan_folds.py [--minutes 4 | --epochs N] [--data ../shared/data/kvasir-seg] [--work DIR]
    python benchmarks/plan_folds.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's medseg, in this process as in the commands it runs (_env)
FOLDS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "kvasir-seg")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per fold (default 4)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per fold instead of --minutes (Dice independent of the load)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--device-memory", default="auto", help="medseg plan --device-memory (default auto)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the code only: 20 training images, 4 validation images, 64x64, 1 epoch per fold, "
                             "no TTA")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"error: Kvasir-SEG folder {args.data} not found", file=sys.stderr)
        return 1
    if args.minutes <= 0:
        print(f"error: --minutes: got {args.minutes}; allowed a number > 0", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs < 1:
        print(f"error: --epochs: got {args.epochs}; allowed an integer >= 1", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="plan-folds-"))
    work.mkdir(parents=True, exist_ok=True)

    train_ids, val_ids = _fixed_split(args.data)
    if args.smoke:
        train_ids, val_ids = train_ids[:20], val_ids[:4]
    print(f"split: {len(train_ids)} training / {len(val_ids)} validation images (configs/kvasir.yaml: "
          f"data.val_fraction 0.2, data.seed 0){' [smoke subset]' if args.smoke else ''}; work folder {work}")
    _links(args.data, train_ids, work / "train", masks=True)
    _links(args.data, val_ids, work / "val", masks=False)

    plan = work / "plan.yaml"
    t0 = time.perf_counter()
    out = run_medseg("plan", work / "train", "-o", plan, "--device-memory", args.device_memory, "--overwrite")
    planned = [line.strip() for line in out.splitlines()
               if ":" in line and not line.startswith(("config", "fingerprint"))]
    print(f"plan: {'; '.join(planned)} ({time.perf_counter() - t0:.0f} s)")

    sets = ["data.image_size=[64,64]", "infer.tta=false"] if args.smoke else []
    if args.smoke:
        epochs = 1
    elif args.epochs is not None:
        epochs = args.epochs
        print(f"epochs per fold: {epochs} (--epochs)")
    else:
        epochs = _epochs_for(plan, args.minutes, work / "probe", sets)
    sets += [f"train.max_epochs={epochs}", f"data.folds={FOLDS}"]
    if epochs <= 5:  # the planned cosine schedule warms up for 5 epochs
        sets.append("train.scheduler.warmup_epochs=0")
    run = work / "cv"
    t0 = time.perf_counter()
    run_medseg("train", plan, *_set(sets), "--fold", "all", "-o", run, "--overwrite")
    cv_wall = time.perf_counter() - t0
    own = {k: _best_val_dice(run / f"fold_{k}") for k in range(FOLDS)}
    for k, dice in own.items():
        print(f"fold {k}: own validation Dice {dice:.4f} ({epochs} epochs)")
    name = _labels(run).names[1]  # the planned config discovers the classes: 255 -> its name
    summary = json.loads((run / "cv_metrics.summary.json").read_text())
    cv = summary["summary"][name]["dice"]
    print(f"cross-validation Dice ({name}, union of {summary['n_cases']} cases, {FOLDS} folds): {cv['mean']:.4f} "
          f"+- {cv['std']:.4f}; {cv_wall / 60:.1f} min for all folds ({cv_wall / 60 / FOLDS:.1f} min per fold, "
          "shared machine)")

    truth = {case: args.data / "masks" / f"{case}.jpg" for case in val_ids}
    status = _single_and_ensemble(run, work, work / "val" / "images", truth, own, smoke=args.smoke)
    # after the predictions above: predict applies RUN/postprocessing.json, and the comparison is of the models
    selected = run_medseg("postprocess-select", run, "--overwrite")
    rows = [line.split() for line in selected.splitlines() if line.split()[:1] == [name]]
    if rows:
        print(f"postprocess-select ({name}): CV Dice {rows[0][1]} -> {rows[0][2]} with {rows[0][3]}")
    return status


def _single_and_ensemble(run: Path, work: Path, images: Path, truth: dict[str, Path], own: dict[int, float], *,
                         smoke: bool) -> int:
    """Dice of each fold and of the folds' ensemble on the validation images."""
    single = {}
    for k in range(FOLDS):
        run_medseg("predict", run / f"fold_{k}", images, "-o", work / f"pred_fold_{k}", "--overwrite")
        single[k] = _dice(work / f"pred_fold_{k}", truth, run)
        print(f"fold {k} on the {len(truth)} validation images: Dice {single[k]:.4f}")
    best = max(own, key=lambda k: own[k])
    print(f"best single fold (by its own validation Dice): fold {best}, Dice on the {len(truth)} validation "
          f"images {single[best]:.4f} (median of the folds {statistics.median(single.values()):.4f})")
    ensemble = subprocess.run(_command("predict", run, images, "-o", work / "pred_ensemble", "--overwrite"),
                              capture_output=True, text=True, env=_env())
    if ensemble.returncode != 0:
        reason = (ensemble.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"ensemble: not available in this build (medseg predict {run.name} exited {ensemble.returncode}: "
              f"{reason})")
        return 0 if smoke else 1
    dice = _dice(work / "pred_ensemble", truth, run)
    print(f"{FOLDS}-fold ensemble on the {len(truth)} validation images: Dice {dice:.4f} "
          f"({dice - single[best]:+.4f} vs the best single fold)")
    return 0


def _fixed_split(data: Path) -> tuple[list[str], list[str]]:
    """The training and validation case ids that configs/kvasir.yaml gives on this data."""
    from medseg.config import load_config
    from medseg.data.pairing import find_pairs_from_config
    from medseg.data.splits import select_split

    cfg = load_config(REPO / "configs" / "kvasir.yaml", [f"data.root={data.resolve()}"])
    train, val = select_split(find_pairs_from_config(cfg.data), cfg.data)
    return [p.case_id for p in train], [p.case_id for p in val]


def _links(data: Path, ids: list[str], folder: Path, *, masks: bool) -> None:
    for sub in ("images", "masks") if masks else ("images",):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for case in ids:
            link = folder / sub / f"{case}.jpg"
            if not link.exists():
                link.symlink_to((data / sub / f"{case}.jpg").resolve())


def _epochs_for(plan: Path, minutes: float, probe: Path, sets: list[str]) -> int:
    """Epochs that fit ``minutes``: a 2-epoch run at the planned settings, its median epoch (+ validation) time."""
    run_medseg("train", plan, *_set([*sets, "train.max_epochs=2", "train.scheduler.warmup_epochs=0"]), "-o", probe,
            "--overwrite")
    records = json.loads((probe / "log.json").read_text())
    per_epoch = statistics.median(r["epoch_time_s"] + r.get("val_time_s", 0.0) for r in records)
    epochs = max(1, int(minutes * 60 / per_epoch))
    print(f"epochs per fold: {epochs} (probe: {per_epoch:.1f} s per epoch with validation, --minutes {minutes:g})")
    return epochs


def _best_val_dice(fold: Path) -> float:
    records = json.loads((fold / "log.json").read_text())
    return max(r["val_dice"] for r in records if r.get("val_dice") is not None)


def _labels(run: Path):
    from medseg.data.labels import LabelMap

    return LabelMap.from_dict(json.loads((run / "fold_0" / "labels.json").read_text()))


def _dice(pred: Path, truth: dict[str, Path], run: Path) -> float:
    """Mean Dice of the foreground class over the cases (medseg evaluate's figure; JPEG masks: tolerance 20)."""
    from medseg.evaluation.evaluate import evaluate

    labels = _labels(run)
    return evaluate(pred, truth, labels=labels, tolerance=20).summary[labels.names[1]]["dice"]["mean"]


def _set(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "medseg", *map(str, args)]


def run_medseg(*args: object) -> str:
    """Run a medseg command; its stdout, or exit with its error line."""
    done = subprocess.run(_command(*args), capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        print(f"error: medseg {' '.join(map(str, args[:1]))} failed ({done.returncode}): "
              f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}", file=sys.stderr)
        raise SystemExit(1)
    return done.stdout


if __name__ == "__main__":
    sys.exit(main())
