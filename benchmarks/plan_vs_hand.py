"""Benchmark: ``medseg plan`` and one fold against the hand-written configs/spine.yaml on the synthetic spine set.

Issue 12's check: "On the synthetic spine set: ``medseg plan`` then one fold reaches the Dice of the hand-written
configs/spine.yaml or better, in no more time."

Steps (everything through the CLI, ``python -m medseg``, in a work folder):
1. ``medseg synth spine --n CASES`` writes the synthetic spine CT set (make_spine_dataset's layout, the one
   configs/spine.yaml's header names).
2. ``medseg plan DATA -o plan.yaml --device-memory cpu``.
3. Fold 0 of 5 with the plan and fold 0 of 5 with configs/spine.yaml pointed at the same data
   (``--set data.root=DATA --set data.folds=5 --fold 0``), both with ``data.seed`` fixed: ``data.folds`` deals the
   cases sorted by name through a permutation seeded by ``data.seed``, so both runs validate the same cases (their
   ``fold_0/splits/val.txt`` are printed and compared; the benchmark stops if they differ).
   Budget: the same number of epochs for both (``--epochs N``) or the same wall time (``--minutes M``: a 2-epoch
   probe of each config times its epoch, and ``M`` minutes become that config's ``train.max_epochs``).
4. Per run: the settings (spacing, patch, batch, network), wall time, epochs run, the best validation Dice, and
   the plan/hand ratios of Dice and time.

Dice: the mean over the vertebra classes present in the data (the five labels the generator writes) of the
per-class validation Dice (``val_per_class`` in log.json), at the best such epoch. The hand config lists eight
vertebrae; its three absent from the synthetic data are left out so both runs average the same classes (medseg's
own ``val_dice``, over the classes each config lists, is printed beside it). Validation follows each config's own
``train.val_every`` (and always runs after the last epoch).

Time: the wall time of the ``medseg train`` command (process start-up, data loading, training and validation) and
the sum of the logged epoch and validation times. The machine may be shared: times are one run's and noisy.

Usage:
    python benchmarks/plan_vs_hand.py [--epochs 10 | --minutes M] [--cases 12] [--work DIR]
    python benchmarks/plan_vs_hand.py --smoke      # check the code: 5 cases, 2 epochs (about 4 min, shared 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from plan_folds import run_medseg  # one way to run the CLI for both benchmarks

REPO = Path(__file__).resolve().parents[1]
FOLDS = 5
FOLD = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12, help="synthetic cases (default 12; at least 5)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both runs (default 10)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall minutes of training for each run instead of --epochs (a 2-epoch probe per config "
                             "turns them into epochs)")
    parser.add_argument("--hand", type=Path, default=REPO / "configs" / "spine.yaml",
                        help="hand-written config (default configs/spine.yaml)")
    parser.add_argument("--hand-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for the hand config only (e.g. data.patch_size=[64,64,64], the CPU size "
                             "its comment suggests); none by default: the config as written")
    parser.add_argument("--seed", type=int, default=0, help="data.seed of both runs (the fold split; default 0)")
    parser.add_argument("--device", default="cpu", help="medseg train --device (default cpu)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--smoke", action="store_true", help="check the code only: 5 cases, 2 epochs")
    args = parser.parse_args()
    if args.epochs is not None and args.minutes is not None:
        print("error: --epochs and --minutes: give one of them, not both", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs < 1:
        print(f"error: --epochs: got {args.epochs}; allowed an integer >= 1", file=sys.stderr)
        return 2
    if args.minutes is not None and args.minutes <= 0:
        print(f"error: --minutes: got {args.minutes}; allowed a number > 0", file=sys.stderr)
        return 2
    if args.cases < FOLDS:
        print(f"error: --cases: got {args.cases}; allowed an integer >= {FOLDS} (one case per fold at least)",
              file=sys.stderr)
        return 2
    if not args.hand.is_file():
        print(f"error: --hand: {args.hand} not found", file=sys.stderr)
        return 2
    if args.smoke:
        args.cases, args.epochs, args.minutes = FOLDS, 2, None
    elif args.epochs is None and args.minutes is None:
        args.epochs = 10
    work = (args.work or Path(tempfile.mkdtemp(prefix="plan-vs-hand-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(shared: times are one run's, noisy); work folder {work}")

    run_medseg("synth", "spine", "-o", data, "--n", args.cases, "--seed", 0, "--overwrite")
    plan = work / "plan.yaml"
    t0 = time.perf_counter()
    run_medseg("plan", data, "-o", plan, "--device-memory", "cpu", "--overwrite")
    plan_s = time.perf_counter() - t0
    print(f"data: {args.cases} synthetic spine cases (medseg synth spine --seed 0); fold {FOLD} of {FOLDS}, "
          f"data.seed {args.seed}; medseg plan took {plan_s:.1f} s")

    common = [f"data.folds={FOLDS}", f"data.seed={args.seed}"]
    runs = {"plan": (plan, common),
            "hand": (args.hand, [f"data.root={data}", *common, *args.hand_set])}
    epochs: dict[str, int] = {}
    for name, (config, sets) in runs.items():
        if args.minutes is not None:
            epochs[name] = _epochs_for(config, sets, args.minutes, work / f"probe_{name}", args.device)
            print(f"{name}: {epochs[name]} epochs fit {args.minutes:g} min (probe)")
        else:
            epochs[name] = args.epochs

    results: dict[str, dict[str, Any]] = {}
    for name, (config, sets) in runs.items():
        run = work / f"run_{name}"
        budget = [f"train.max_epochs={epochs[name]}"]
        if epochs[name] <= 5:  # both configs warm up for 5 epochs: none in runs that short
            budget.append("train.scheduler.warmup_epochs=0")
        t0 = time.perf_counter()
        run_medseg("train", config, *_set([*sets, *budget]), "--fold", FOLD, "-o", run, "--overwrite",
                "--device", args.device)
        results[name] = _result(run / f"fold_{FOLD}", time.perf_counter() - t0)

    val = {name: r["val_ids"] for name, r in results.items()}
    for name, ids in val.items():
        print(f"{name}: validation cases {' '.join(ids)}")
    if val["plan"] != val["hand"]:
        print("error: the two runs validate different cases; the comparison is void", file=sys.stderr)
        return 1

    plan_values = {v for c in results["plan"]["labels"][1:] for v in c["values"]}
    for name, r in results.items():
        shared = [c["name"] for c in r["labels"][1:] if plan_values & set(c["values"])]
        r["dice"], r["best_epoch"] = _best_dice(r["log"], shared)
        r["n_classes"] = len(shared)
        s = r["settings"]
        print(f"{name}: spacing {s['spacing']} mm, patch {s['patch']}, batch {s['batch']}, network {s['network']}, "
              f"val_every {s['val_every']}")
        print(f"{name}: {r['epochs']} epochs, wall {r['wall_s']:.1f} s (train+val logged {r['logged_s']:.1f} s, "
              f"median epoch {r['median_epoch_s']:.1f} s); best validation Dice {r['dice']:.4f} (mean of "
              f"{len(shared)} vertebra classes in the data, epoch {r['best_epoch']}; medseg val_dice "
              f"{r['val_dice']:.4f})")
    p, h = results["plan"], results["hand"]
    dice_ratio = p["dice"] / h["dice"] if h["dice"] > 0 else float("inf")
    print(f"plan/hand: Dice {dice_ratio:.3f} ({p['dice']:.4f} / {h['dice']:.4f}), wall time "
          f"{p['wall_s'] / h['wall_s']:.3f} ({p['wall_s']:.1f} / {h['wall_s']:.1f} s), logged time "
          f"{p['logged_s'] / h['logged_s']:.3f}")
    met = p["dice"] >= h["dice"] and p["wall_s"] <= h["wall_s"]
    print(f"check (plan Dice >= hand Dice in no more wall time): {'met' if met else 'not met'}"
          f"{' [smoke: code check only]' if args.smoke else ''}")
    return 0


def _result(fold: Path, wall_s: float) -> dict[str, Any]:
    """What a finished fold run folder says: settings, log, validation ids, label classes, times."""
    log = json.loads((fold / "log.json").read_text())
    cfg = yaml.safe_load((fold / "config.yaml").read_text())
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    network = f"{m.get('name', 'unet')} {m.get('channels')} strides {m.get('strides')}"
    vals = [r["val_dice"] for r in log if r.get("val_dice") is not None]
    return {
        "log": log,
        "labels": json.loads((fold / "labels.json").read_text())["classes"],
        "val_ids": sorted((fold / "splits" / "val.txt").read_text().split()),
        "settings": {"spacing": d.get("spacing_mm"), "patch": d.get("patch_size"), "batch": t.get("batch_size"),
                     "network": network, "val_every": t.get("val_every")},
        "epochs": len(log),
        "wall_s": wall_s,
        "logged_s": sum(r["epoch_time_s"] + r.get("val_time_s", 0.0) for r in log),
        "median_epoch_s": statistics.median(r["epoch_time_s"] for r in log),
        "val_dice": max(vals) if vals else float("nan"),
    }


def _best_dice(log: list[dict[str, Any]], classes: list[str]) -> tuple[float, int]:
    """Best mean per-class validation Dice over ``classes`` (a class missing from a record counts 0), its epoch."""
    best, epoch = float("nan"), 0
    for i, rec in enumerate(log, start=1):
        per_class = rec.get("val_per_class")
        if not per_class:
            continue
        dice = statistics.fmean(per_class.get(c, {}).get("dice", 0.0) for c in classes)
        if not dice <= best:  # also replaces the initial NaN
            best, epoch = dice, rec.get("epoch", i)
    return best, epoch


def _epochs_for(config: Path, sets: list[str], minutes: float, probe: Path, device: str) -> int:
    """Epochs that fit ``minutes``: a 2-epoch run of fold 0, its median epoch time with validation."""
    run_medseg("train", config, *_set([*sets, "train.max_epochs=2", "train.val_every=1",
                                    "train.scheduler.warmup_epochs=0"]),
            "--fold", FOLD, "-o", probe, "--overwrite", "--device", device)
    records = json.loads((probe / f"fold_{FOLD}" / "log.json").read_text())
    per_epoch = statistics.median(r["epoch_time_s"] + r.get("val_time_s", 0.0) for r in records)
    return max(1, int(minutes * 60 / per_epoch))


def _set(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


if __name__ == "__main__":
    sys.exit(main())
