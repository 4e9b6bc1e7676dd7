"""Benchmark medseg.sliding_window_predict against MONAI's sliding_window_inference.

    python benchmarks/sliding_window.py            # full: all figures (CPU: ~10-15 min incl. training once)
    python benchmarks/sliding_window.py --quick    # < 2 min with cached weights: smaller volumes, 1 repeat
    python benchmarks/sliding_window.py --device cuda

Network: MONAI UNet (3D, channels 16-32-64-128-256, strides 2, two residual units), trained briefly on the
shared spine CT at 1.5 mm (9 classes: background + S1, L5..L1, T12, T11); weights are cached in
benchmarks/.cache/unet_spine_1p5mm.pt. MONAI baseline: sliding_window_inference(x, (96,)*3,
sw_batch_size=4, overlap=0.25, mode="gaussian") in fp32, then argmax. medseg: sliding_window_predict(net, x,
96, output="labels") with its defaults (precision "auto", tiling "auto").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medseg.engine.sliding_window import resolve_precision, sliding_window_predict  # noqa: E402

DATA = Path("/work/shared/data/spine-ct-totalseg")
CACHE = ROOT / "benchmarks" / ".cache" / "unet_spine_1p5mm.pt"
LABELS = (0, 26, 27, 28, 29, 30, 31, 32, 33)
ROI = (96, 96, 96)


def build_unet(classes: int = len(LABELS)) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, classes, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)


def load_spine() -> tuple[torch.Tensor, torch.Tensor]:
    """CT windowed to 0..1 and class map, both resampled from 3 mm to 1.5 mm: (1, 1, 244, 202, 224)."""
    ct = torch.from_numpy(np.asarray(nib.load(DATA / "example_ct.nii.gz").dataobj, dtype=np.float32))
    seg = np.asarray(nib.load(DATA / "totalseg_vertebrae.nii.gz").dataobj)
    classes = np.zeros(seg.shape, dtype=np.int64)
    for k, value in enumerate(LABELS):
        classes[seg == value] = k
    ct = ((ct + 200.0) / 1200.0).clamp(0, 1)[None, None]  # HU window [-200, 1000]
    size = [2 * s for s in ct.shape[2:]]
    image = F.interpolate(ct, size=size, mode="trilinear", align_corners=False)
    label = F.interpolate(torch.from_numpy(classes)[None, None].float(), size=size, mode="nearest").long()
    return image, label


def train(net, image, label, seconds: float) -> None:
    """A few minutes of Adam on random 96^3 patches (class-balanced crops around the spine)."""
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    fg = torch.nonzero(label[0, 0] > 0).cpu()
    shape = torch.tensor(image.shape[2:])
    gen = torch.Generator().manual_seed(0)
    device = next(net.parameters()).device.type
    net.train()
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        xs, ys = [], []
        for _ in range(2):
            if torch.rand(1, generator=gen) < 0.7:
                centre = fg[torch.randint(len(fg), (1,), generator=gen)][0]
            else:
                centre = (torch.rand(3, generator=gen) * shape).long()
            lo = (centre - 48).clamp(min=0)
            lo = torch.minimum(lo, shape - 96)
            sl = tuple(slice(int(a), int(a) + 96) for a in lo)
            xs.append(image[(0, slice(None), *sl)])
            ys.append(label[(0, slice(None), *sl)])
        with torch.autocast(device, dtype=torch.bfloat16):
            out = net(torch.stack(xs))
        loss = loss_fn(out.float(), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"  train step {step}, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    net.eval()


def trained_unet(image, label, seconds: float, device: str, retrain: bool) -> tuple[torch.nn.Module, str]:
    net = build_unet()
    if CACHE.exists() and not retrain:
        net.load_state_dict(torch.load(CACHE, weights_only=True))
        return net.eval(), f"trained (cached {CACHE.relative_to(ROOT)})"
    print(f"training the benchmark UNet for {seconds:.0f} s (cached afterwards in {CACHE})", flush=True)
    train(net.to(device), image.to(device), label.to(device), seconds)
    net = net.cpu()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), CACHE)
    return net, f"trained {seconds:.0f} s on {device}"


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    result = fn()  # warm-up: oneDNN/cuDNN kernel selection for these shapes
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def dice_per_class(a: torch.Tensor, b: torch.Tensor, classes: int) -> list[float]:
    out = []
    for k in range(classes):
        x, y = a == k, b == k
        denom = int(x.sum() + y.sum())
        if denom:
            out.append(2 * int((x & y).sum()) / denom)
    return out


def run_volume(name, net, image, repeats, device) -> None:
    net = net.to(device)
    image = image.to(device)
    dtype = resolve_precision("auto", device)
    with torch.no_grad():
        t_monai, ref = timed(
            lambda: sliding_window_inference(image, ROI, 4, net, overlap=0.25, mode="gaussian").argmax(1),
            repeats,
            device,
        )
        t_ours, (labels, stats) = timed(
            lambda: sliding_window_predict(net, image, ROI, output="labels", return_stats=True), repeats, device
        )
        padded = F.pad(image, [p for s in reversed(image.shape[2:]) for p in (0, -s % 16)])
        ctx = torch.autocast(device, dtype=dtype) if dtype is not None else torch.autocast(device, enabled=False)

        def forward():
            with ctx:
                return net(padded)

        t_fwd, _ = timed(forward, repeats, device)
    dice = dice_per_class(labels[:, 0].long(), ref, int(ref.max()) + 1)
    voxels = image[0, 0].numel()
    shape = "x".join(map(str, image.shape))
    print(f"[{name} {shape}, {device}] plan: {stats.plan}, {stats.precision}")
    print(f"[{name}] time MONAI fp32 / medseg: {t_monai:.2f} s / {t_ours:.2f} s = {t_monai / t_ours:.2f}x")
    print(
        f"[{name}] medseg / one forward pass over the padded volume ({stats.precision}): "
        f"{t_ours:.2f} s / {t_fwd:.2f} s = {t_ours / t_fwd:.2f}"
    )
    print(f"[{name}] voxels/s: medseg {voxels / t_ours / 1e6:.2f} M, MONAI {voxels / t_monai / 1e6:.2f} M")
    print(
        f"[{name}] label agreement (Dice per class present, medseg vs MONAI fp32): min {min(dice):.4f}, "
        f"all [{', '.join(f'{d:.4f}' for d in dice)}]"
    )


def memory(size: int, classes: int, device: str) -> None:
    peaks = {}
    for mode in ("baseline", "monai", "medseg"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "_sw_memory.py"), mode, str(size), str(classes), device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        peaks[mode] = float(out.strip().splitlines()[-1].split("=")[1])
    monai, ours = peaks["monai"] - peaks["baseline"], peaks["medseg"] - peaks["baseline"]
    print(
        f"[memory {size}^3, {classes} classes, labels, {device}] peak above baseline "
        f"({peaks['baseline']:.0f} MB): MONAI {monai:.0f} MB, medseg {ours:.0f} MB, ratio {ours / monai:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small volumes, 1 repeat, no training if cached")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--retrain", action="store_true", help="train again even if weights are cached")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory figure")
    parser.add_argument("--random-weights", action="store_true", help="also report the fixed-seed network")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"auto precision {resolve_precision('auto', args.device)}"
    )
    if args.memory_only:
        memory(128 if args.quick else 256, 10, args.device)
        return
    image, label = load_spine()
    net, how = trained_unet(image, label, 60.0 if args.quick else args.train_seconds, args.device, args.retrain)
    print(f"network: MONAI UNet 16-32-64-128-256, {how}")
    spine = image if not args.quick else image[:, :, 60:156, 40:168, 40:168]
    big = F.pad(image, (0, 0, 11, 11, 0, 0))[:, :, 42:202]  # 160 x 224 x 224 crop of the spine CT
    volumes = [("spine 1.5 mm", spine)] if args.quick else [("volume", big), ("spine 1.5 mm", spine)]
    for name, vol in volumes:
        run_volume(name, net, vol, repeats, args.device)
    if args.random_weights:
        run_volume("spine 1.5 mm, random weights", build_unet().eval(), spine, repeats, args.device)
    memory(128 if args.quick else 256, 10, args.device)


if __name__ == "__main__":
    main()
