"""Benchmark: train configs/kvasir.yaml on the shared Kvasir-SEG pairs on CPU; report Dice and time.

Prints one line per figure:
- the validation split (30 of 150 images, fixed by data.seed) and the device;
- best validation Dice (polyp) and the epoch it was reached, total wall time (target: Dice >= 0.75 within 20 min);
- the Dice reached within the first 20 minutes of training (from the per-epoch log);
- data-loading overhead: median over epochs of epoch time / pure compute time of the same steps (target <= 1.15).

- training throughput (images/s of optimizer steps on in-memory batches) in fp32 with the default layout (what
  medseg trained in on the CPU before bf16 training) and with the run's speed settings (bf16 autocast on CPUs
  with native bf16 or fp16 + loss scaling on CUDA, channels-last).

Usage:
    python benchmarks/kvasir_train.py [--data ../shared/data/kvasir-seg] [--set train.max_epochs=60 ...]
    python benchmarks/kvasir_train.py --throughput-only [--device cuda] [--compile]
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
    parser.add_argument("--device", default=None, help="train.device (cpu, cuda); default: the config's")
    parser.add_argument("--throughput-only", action="store_true", help="only the training throughput figures")
    parser.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput timing")
    args = parser.parse_args()

    import torch

    import medseg

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"error: Kvasir-SEG folder {args.data} not found", file=sys.stderr)
        return 1
    device_sets = [f"train.device={args.device}"] if args.device else []
    cfg = medseg.load_config(args.config, [f"data.root={args.data.resolve()}", *device_sets, *args.sets])
    if args.throughput_only:
        _print_throughput(cfg, args.steps, args.compile)
        return 0
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
    for name, dice in _full_resolution_dice(result, run_dir, cfg).items():
        print(f"val Dice (polyp), best checkpoint, full-resolution masks via Predictor, {name}: {dice:.4f}")
    steps = records[-1]["steps"]
    pure = _pure_compute_epoch(cfg, run_dir, steps=steps)
    epoch_median = statistics.median(r["epoch_time_s"] for r in records)
    print(
        f"data-loading overhead: median epoch time / pure compute time of the same {steps} steps (in-memory "
        f"batches, timed after training) = {epoch_median:.2f} s / {pure:.2f} s = {epoch_median / pure:.3f} "
        "(target <= 1.15)"
    )
    print(
        f"data-loading overhead, in-loop timing: median epoch time / compute time = {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(f"median epoch time {epoch_median:.1f} s; run folder {run_dir}")
    _print_throughput(cfg, args.steps, args.compile)
    return 0


def _print_throughput(cfg, steps: int, with_compile: bool) -> None:
    """Images/s of training steps (forward, loss, backward, clip, AdamW) on one in-memory batch, per setting."""
    import torch

    from medseg.device import resolve_device
    from medseg.training.speed import TrainingSpeed, resolve_training_speed

    device = resolve_device(cfg.train.device)
    ours = resolve_training_speed(cfg.train, device, 2)
    settings = {"fp32, contiguous (before)": TrainingSpeed(),
                "fp32, channels_last": TrainingSpeed(memory_format=torch.channels_last)}
    if ours.amp_dtype is not None:
        settings[f"{ours.describe().split(',')[0]}, contiguous"] = TrainingSpeed(
            amp_dtype=ours.amp_dtype, scale_loss=ours.scale_loss)
    settings[f"{ours.describe()} (medseg now)"] = TrainingSpeed(
        amp_dtype=ours.amp_dtype, scale_loss=ours.scale_loss, memory_format=ours.memory_format)
    if with_compile:
        settings[f"{ours.describe()}, torch.compile"] = TrainingSpeed(
            amp_dtype=ours.amp_dtype, scale_loss=ours.scale_loss, memory_format=ours.memory_format, compile=True)
    rates = {name: _images_per_s(cfg, device, speed, steps) for name, speed in settings.items()}
    base = rates["fp32, contiguous (before)"]
    for name, rate in rates.items():
        print(f"training throughput, batch {cfg.train.batch_size} of {list(cfg.data.image_size)}, {device}, {name}: "
              f"{rate:.1f} images/s = {rate / base:.2f}x fp32")


def _images_per_s(cfg, device, speed, steps: int, repeats: int = 3) -> float:
    """Median images/s over ``repeats`` rounds of ``steps`` steps, after one warm-up round."""
    import torch

    from medseg.losses import build_loss
    from medseg.models import build_model
    from medseg.models.outputs import weighted_loss

    classes = len(cfg.data.labels.classes) if cfg.data.labels.classes else 2
    channels = 3 if cfg.data.color == "rgb" else 1
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=channels, out_channels=classes).to(device).train()
    step_model = speed.model(model)
    loss_fn = build_loss(cfg.loss, classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=speed.scale_loss)
    g = torch.Generator().manual_seed(0)
    h, w = cfg.data.image_size
    image = speed.batch(torch.rand((cfg.train.batch_size, channels, h, w), generator=g).to(device))
    label = torch.randint(0, classes, (cfg.train.batch_size, 1, h, w), generator=g).to(device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=speed.amp_dtype or torch.bfloat16,
                                enabled=speed.amp_dtype is not None):
                loss = weighted_loss(loss_fn, step_model(image), label)  # several heads (DeepLabV3's aux) too
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return steps * cfg.train.batch_size / statistics.median(times[1:])


def _full_resolution_dice(result, run_dir: Path, cfg) -> dict[str, float]:
    """Mean per-image Dice of the best checkpoint on the validation images at their original size,
    through medseg's Predictor and evaluate (what `medseg predict` + `medseg evaluate` give a user)."""
    import shutil

    import medseg

    val_ids = (run_dir / "splits" / "val.txt").read_text().split()
    truth = run_dir.parent / "val-truth"
    truth.mkdir(exist_ok=True)
    for case in val_ids:
        shutil.copy(cfg.data.root / cfg.data.masks_dir / f"{case}.jpg", truth / f"{case}.jpg")
    images = [cfg.data.root / cfg.data.images_dir / f"{case}.jpg" for case in val_ids]
    variants = {"plain": {"tta": False, "largest_component": False},
                "flip TTA + largest component": {"tta": True, "largest_component": True}}
    out: dict[str, float] = {}
    for name, settings in variants.items():
        predictor = medseg.Predictor.from_checkpoint(result.best_checkpoint, **settings)
        pred = run_dir.parent / f"val-pred-{'tta' if settings['tta'] else 'plain'}"
        medseg.predict_paths(predictor, images, pred, overwrite=True, progress=False)
        ev = medseg.evaluate(pred, truth, labels=predictor.labels, tolerance=cfg.data.labels.tolerance)
        out[name] = ev.summary["polyp"]["dice"]["mean"]
    return out


def _pure_compute_epoch(cfg, run_dir: Path, *, steps: int, repeats: int = 3) -> float:
    """Seconds for ``steps`` optimizer steps on one batch kept in memory: same model, loss, optimizer,
    batch size and device as training, with no data loading and no augmentation."""
    import torch

    from medseg.data.labels import LabelMap
    from medseg.device import resolve_device
    from medseg.losses import build_loss
    from medseg.models import build_model

    labels = LabelMap.from_dict(json.loads((run_dir / "labels.json").read_text()))
    device = resolve_device(cfg.train.device)
    channels = 3 if cfg.data.color == "rgb" else 1
    model = build_model(cfg.model, in_channels=channels, out_channels=labels.num_classes).to(device).train()
    loss_fn = build_loss(cfg.loss, labels.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(0)
    h, w = cfg.data.image_size
    image = torch.rand((cfg.train.batch_size, channels, h, w), generator=g).to(device)
    label = torch.randint(0, labels.num_classes, (cfg.train.batch_size, 1, h, w), generator=g).to(device)
    times = []
    for _ in range(repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(image), label).backward()
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


if __name__ == "__main__":
    raise SystemExit(main())
