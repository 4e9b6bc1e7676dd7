"""Benchmark medseg.sliding_window_predict against MONAI's sliding_window_inference.

    python benchmarks/sliding_window.py            # full: both networks, all figures (CPU: ~10 min; the
                                                   # first run trains each network ~8 min and caches it)
    python benchmarks/sliding_window.py --quick    # smaller volumes, 1 repeat, no training if cached
    python benchmarks/sliding_window.py --smoke    # seconds: tiny crops, 1 thread, 2 training steps (checks code)
    python benchmarks/sliding_window.py --device cuda
    python benchmarks/sliding_window.py --device cuda --ct --task vertebrae   # + a 512x512x400 CT-sized volume
    python benchmarks/sliding_window.py --task spine --no-memory   # one network: spine vs background (2 classes)

Network: MONAI UNet (3D, channels 16-32-64-128-256, strides 2, two residual units) with ``norm="batch"``:
in eval mode batch norm is a fixed per-channel affine map, so the fully convolutional network gives the same
result on a tile larger than its training patch, which is what lets medseg's ``tiling="auto"`` run large
tiles. Two such networks (``--task``, both by default) are trained on the shared spine CT at 1.5 mm: "vertebrae"
(9 classes: background + S1, L5..L1, T12, T11) and "spine" (2 classes, below). Training (HU window
[-200, 1000]; 96^3 patches, 80 % centred on the spine, batch 2, bf16 autocast, AdamW lr 3e-3 with cosine
decay) for ``--train-seconds``; weights are cached in benchmarks/.cache/ (gitignored). One extra line times
the same UNet with MONAI's default instance norm (untrained, fixed seed), for which ``tiling="auto"``
automatically uses roi-size windows.

The "spine" network (cached separately) has 2 classes, vertebral bone vs background: a task a CPU trains to a
decided network in minutes, where naming each vertebra needs far longer (its identity depends on
context beyond one 96^3 window, so an undertrained 9-class network flips labels with the window placement).

Agreement lines: per-class Dice of medseg's labels against MONAI's fp32 labels; where the voxels that differ lie;
how often they differ where MONAI's top softmax probability is >= 0.9 versus elsewhere; and, as a control, MONAI
against itself with its window grid shifted by 8 voxels (the same network, precision and blending: only where the
windows fall changes), which bounds the agreement any engine with other windows can reach; and both engines
against the labels of one forward pass over the whole padded volume, the network's answer with the most context.

MONAI baselines: sliding_window_inference(x, (96,)*3, sw_batch_size=4, overlap=0.25, mode="gaussian") in fp32,
then argmax; and the same under torch.autocast (bf16 on the CPU, fp16 on CUDA), what a user who cares about speed
runs. medseg: sliding_window_predict(net, x, 96, output="labels") with its defaults (precision "auto", tiling
"auto", backend "auto"). One forward pass over the whole padded volume is timed with each backend (fp32 eager,
autocast eager, autocast channels-last, and with ``--compile`` torch.compile); medseg's time is given over the
fastest of them. Timings: one warm-up, then the median of ``--repeats`` runs (3 by default). On CUDA each line
also gives the peak GPU memory of the call (torch.cuda.max_memory_allocated).

Allocator: the ``medseg`` command asks PyTorch for huge-page CPU allocations before torch loads
(``THP_MEM_ALLOC_ENABLE=1``, :func:`medseg.processes.prefer_huge_pages`). This script does the same before it
imports torch, so MONAI and medseg run under the same allocator (the header line says which); run it with
``THP_MEM_ALLOC_ENABLE=0`` for 4 KiB pages in both.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "THP_MEM_ALLOC_ENABLE" not in os.environ and sys.platform.startswith("linux"):
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # what the medseg command does; MONAI gets it too (same process)

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medseg.sliding_window.backend import using_backend  # noqa: E402
from medseg.sliding_window.predict import resolve_precision, sliding_window_predict  # noqa: E402

DATA = Path("/work/shared/data/spine-ct-totalseg")
CACHE = ROOT / "benchmarks" / ".cache" / "unet_spine_1p5mm_batchnorm.pt"
LABELS = (0, 26, 27, 28, 29, 30, 31, 32, 33)
#: Benchmark tasks: class index -> TotalSegmentator label values. "vertebrae" names each vertebra (its identity
#: needs context beyond one 96^3 window); "spine" is vertebral bone vs background, which a CPU can train to a
#: decided network in minutes.
TASKS = {
    "vertebrae": tuple((v,) for v in LABELS),
    "spine": ((0,), LABELS[1:]),
}
ROI = (96, 96, 96)
PATCH = 96


def build_unet(norm: str = "batch", classes: int = len(LABELS)) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, classes, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm=norm)


def load_spine(groups=TASKS["vertebrae"]) -> tuple[torch.Tensor, torch.Tensor]:
    """CT windowed to 0..1 and class map, both resampled from 3 mm to 1.5 mm: (1, 1, 244, 202, 224)."""
    ct = torch.from_numpy(np.asarray(nib.load(DATA / "example_ct.nii.gz").dataobj, dtype=np.float32))
    seg = np.asarray(nib.load(DATA / "totalseg_vertebrae.nii.gz").dataobj)
    classes = np.zeros(seg.shape, dtype=np.int64)
    for k, values in enumerate(groups):
        classes[np.isin(seg, values)] = k
    ct = ((ct + 200.0) / 1200.0).clamp(0, 1)[None, None]  # HU window [-200, 1000]
    size = [2 * s for s in ct.shape[2:]]
    image = F.interpolate(ct, size=size, mode="trilinear", align_corners=False)
    label = F.interpolate(torch.from_numpy(classes)[None, None].float(), size=size, mode="nearest").long()
    return image, label


def crop_160(volume: torch.Tensor) -> torch.Tensor:
    """160 x 224 x 224 crop of the 1.5 mm spine volume: slices 42..201 of 244, dim 1 zero-padded 202 -> 224."""
    return F.pad(volume, (0, 0, 11, 11, 0, 0))[:, :, 42:202]


def train(net, image, label, seconds: float, max_steps: int | None = None) -> dict:
    """AdamW (lr 3e-3, cosine decay over ``seconds``) on random 96^3 patches, 80 % centred on the spine."""
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    fg = torch.nonzero(label[0, 0] > 0).cpu()
    shape = torch.tensor(image.shape[2:])
    patch = torch.minimum(torch.full((3,), PATCH), shape)
    gen = torch.Generator().manual_seed(0)
    device = next(net.parameters()).device.type
    net.train()
    start, step, skipped, losses = time.perf_counter(), 0, 0, []
    while time.perf_counter() - start < seconds and (max_steps is None or step < max_steps):
        frac = (time.perf_counter() - start) / seconds
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        xs, ys = [], []
        for _ in range(2):
            if torch.rand(1, generator=gen) < 0.8:
                centre = fg[torch.randint(len(fg), (1,), generator=gen)][0]
            else:
                centre = (torch.rand(3, generator=gen) * shape).long()
            lo = torch.minimum((centre - patch // 2).clamp(min=0), shape - patch)
            sl = tuple(slice(int(a), int(a + p)) for a, p in zip(lo, patch, strict=True))
            xs.append(image[(0, slice(None), *sl)])
            ys.append(label[(0, slice(None), *sl)])
        with torch.autocast(device, dtype=torch.bfloat16):
            out = net(torch.stack(xs))
        loss = loss_fn(out.float(), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        step += 1
        if not (torch.isfinite(loss) and torch.isfinite(norm)):  # e.g. an all-air patch: skip the update
            skipped += 1
            continue
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 and losses:
            recent = statistics.mean(losses[-25:])
            print(f"  train step {step}, loss {recent:.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    net.eval()
    if skipped:
        print(f"  skipped {skipped} steps with a non-finite loss or gradient", flush=True)
    loss = statistics.mean(losses[-25:]) if losses else math.nan  # --smoke: 2 steps, maybe both skipped
    return {"steps": step, "seconds": round(time.perf_counter() - start), "loss": loss}


def trained_unet(image, label, args, task: str, cache: str) -> tuple[torch.nn.Module, str]:
    net = build_unet("batch", len(TASKS[task]))
    cache = Path(cache)
    if cache.exists() and not args.retrain:
        saved = torch.load(cache, weights_only=True)
        net.load_state_dict(saved["state"])
        meta = saved["meta"]
        how = f"cached {cache.name}"
        if args.train_more:
            print(f"training the cached UNet {args.train_more:.0f} s more (cached in {cache})", flush=True)
            more = train(net.to(args.device), image.to(args.device), label.to(args.device), args.train_more)
            net = net.cpu()
            meta = {"steps": meta["steps"] + more["steps"], "seconds": meta["seconds"] + more["seconds"],
                    "loss": more["loss"]}
            torch.save({"state": net.state_dict(), "meta": meta}, cache)
            how = f"cached {cache.name}, trained {more['seconds']} s more now"
    else:
        print(f"training the benchmark UNet for {args.train_seconds:.0f} s (cached in {cache})", flush=True)
        meta = train(net.to(args.device), image.to(args.device), label.to(args.device), args.train_seconds,
                     2 if args.smoke else None)
        net = net.cpu()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": net.state_dict(), "meta": meta}, cache)
        how = "trained now"
    desc = (f"trained {meta['steps']} steps / {meta['seconds']} s on the spine CT ({PATCH}^3 patches, batch 2, bf16, "
            f"AdamW 3e-3), final DiceCE loss {meta['loss']:.3f}, {how}")
    return net.eval(), desc


PEAK_GPU: dict[str, float] = {}


def timed(fn, repeats: int, device: str, name: str = "") -> tuple[float, list[float], object]:
    """One warm-up call (oneDNN/cuDNN kernel selection for these shapes), then the median of ``repeats``.

    On CUDA the peak memory allocated during the warm-up call is kept in ``PEAK_GPU[name]`` (MB)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
        PEAK_GPU[name] = torch.cuda.max_memory_allocated() / 2**20
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def dice_per_class(a: torch.Tensor, ref: torch.Tensor, classes: int) -> dict[int, float]:
    """Dice of each class present in ``ref`` or ``a`` (classes absent from both are skipped)."""
    out = {}
    for k in range(classes):
        x, y = a == k, ref == k
        denom = int(x.sum() + y.sum())
        if denom:
            out[k] = 2 * int((x & y).sum()) / denom
    return out


def where_they_differ(labels: torch.Tensor, ref: torch.Tensor, margin: int = 8) -> str:
    """How many voxels differ, and how many of those lie on a class boundary of ``ref`` / near the border."""
    differ = labels != ref
    n = int(differ.sum())
    total = differ.numel()
    if not n:
        return f"0 of {total}"
    r = ref.float()[:, None]
    edge = (F.max_pool3d(r, 3, 1, 1) != -F.max_pool3d(-r, 3, 1, 1))[:, 0]  # a neighbour has another label
    border = torch.ones_like(differ)
    border[(slice(None), *(slice(margin, -margin) for _ in range(3)))] = False
    return (
        f"{n} of {total} ({100 * n / total:.3f} %); of these {100 * int((differ & edge).sum()) / n:.0f} % on a "
        f"class boundary of MONAI's map, {100 * int((differ & border).sum()) / n:.0f} % within {margin} voxels of "
        "the volume border"
    )


def fmt_dice(dice: dict[int, float]) -> str:
    return f"min {min(dice.values()):.4f}; " + ", ".join(f"{k}: {d:.4f}" for k, d in dice.items())


def fmt_times(times: list[float]) -> str:
    return "/".join(f"{t:.2f}" for t in times)


def monai_labels(net, image):
    """MONAI's labels (timed), and its logits kept for the confidence figure."""
    logits = sliding_window_inference(image, ROI, 4, net, overlap=0.25, mode="gaussian")
    return logits.argmax(1), logits


def monai_shifted_labels(net, image, shift: int = 8):
    """MONAI's labels with its window grid moved by ``shift`` voxels in every dim (edge-replicated margin, cropped
    off again): how much MONAI's own answer depends on where its windows happen to fall."""
    padded = F.pad(image, [p for _ in image.shape[2:] for p in (shift, 0)], mode="replicate")
    logits = sliding_window_inference(padded, ROI, 4, net, overlap=0.25, mode="gaussian")
    return logits[(slice(None), slice(None), *(slice(shift, None) for _ in image.shape[2:]))].argmax(1)


def amp_dtype(device: str) -> torch.dtype:
    """What a speed-minded MONAI user autocasts to: fp16 on CUDA, bf16 on the CPU."""
    return torch.float16 if device == "cuda" else torch.bfloat16


def monai_amp_labels(net, image):
    with torch.autocast(image.device.type, dtype=amp_dtype(image.device.type)):
        return monai_labels(net, image)


def forward_backends(net, padded, repeats, device, dtype, with_compile) -> dict[str, tuple[float, list[float]]]:
    """Time one forward pass over ``padded`` with each backend: {name: (median, runs)}; last output kept in
    ``forward_backends.single`` (autocast eager), the network's one-pass answer."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    variants = [("fp32 eager", None, "eager")]
    if dtype is not None:
        variants += [(f"{name} eager", dtype, "eager"), (f"{name} channels_last", dtype, "channels_last")]
    else:
        variants += [("fp32 channels_last", None, "channels_last")]
    if with_compile:
        variants += [(f"{name} compile", dtype, "compile")]
    out = {}
    for label, dt, backend in variants:
        with torch.no_grad(), using_backend(net, backend, 3) as fwd:
            def run(fwd=fwd, dt=dt):
                with torch.autocast(device, dtype=dt or torch.bfloat16, enabled=dt is not None):
                    return fwd(padded)
            t, ts, y = timed(run, repeats, device, f"forward {label}")
        out[label] = (t, ts)
        if backend == "eager" and dt is dtype:
            forward_backends.single = y.argmax(1).cpu()
        del y
    return out


def run_volume(name, net, image, truth, repeats, device, classes, with_compile=False, one_pass=True) -> None:
    net = net.to(device)
    image = image.to(device)
    dtype = resolve_precision("auto", device)
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(device)]
    with torch.no_grad():
        t_monai, ts_monai, (ref, ref_logits) = timed(lambda: monai_labels(net, image), repeats, device, "monai fp32")
        t_amp, ts_amp, (ref_amp, _) = timed(lambda: monai_amp_labels(net, image), repeats, device, "monai amp")
        t_ours, ts_ours, (labels, stats) = timed(
            lambda: sliding_window_predict(net, image, ROI, output="labels", return_stats=True), repeats, device,
            "medseg")
        confident = torch.softmax(ref_logits, 1).amax(1) >= 0.9
        del ref_logits
        padded = F.pad(image, [p for s in reversed(image.shape[2:]) for p in (0, -s % 16)])
        fwd = forward_backends(net, padded, repeats, device, dtype, with_compile) if one_pass else {}
        single = None
        if one_pass:
            single = forward_backends.single[(slice(None), *(slice(0, s) for s in image.shape[2:]))]
    labels = labels[:, 0].long()
    dice = dice_per_class(labels, ref, classes)
    voxels = image[0, 0].numel()
    shape = "x".join(map(str, image.shape))
    print(f"[{name} {shape}, {device}] medseg plan: {stats.plan}, tiling {stats.tiling}, {stats.precision}, "
          f"backend {stats.backend}")
    print(
        f"[{name}] time MONAI fp32 / medseg: {t_monai:.2f} s / {t_ours:.2f} s = {t_monai / t_ours:.2f}x "
        f"(runs MONAI {fmt_times(ts_monai)}, medseg {fmt_times(ts_ours)})"
    )
    print(
        f"[{name}] time MONAI {amp} autocast / medseg: {t_amp:.2f} s / {t_ours:.2f} s = {t_amp / t_ours:.2f}x "
        f"(runs MONAI {amp} {fmt_times(ts_amp)})"
    )
    for label, (t, ts) in fwd.items():
        print(f"[{name}] one forward pass over the padded volume {'x'.join(map(str, padded.shape[2:]))}, {label}: "
              f"{t:.2f} s (runs {fmt_times(ts)})")
    if fwd:
        best = min(fwd, key=lambda k: fwd[k][0])
        print(f"[{name}] medseg / fastest single forward pass ({best}): {t_ours:.2f} s / {fwd[best][0]:.2f} s = "
              f"{t_ours / fwd[best][0]:.2f}")
    print(f"[{name}] voxels/s: medseg {voxels / t_ours / 1e6:.2f} M, MONAI fp32 {voxels / t_monai / 1e6:.2f} M, "
          f"MONAI {amp} {voxels / t_amp / 1e6:.2f} M")
    if device == "cuda":
        print(f"[{name}] peak GPU memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in PEAK_GPU.items()))
        PEAK_GPU.clear()
    amp_dice = dice_per_class(ref_amp, ref, classes)
    print(f"[{name}] label agreement MONAI {amp} autocast vs MONAI fp32: {fmt_dice(amp_dice)}")
    if truth is not None:
        gt = dice_per_class(ref.cpu(), truth[:, 0], classes)
        print(f"[{name}] MONAI fp32 vs TotalSegmentator labels (is the network trained?), Dice {fmt_dice(gt)}")
        ours_gt = dice_per_class(labels.cpu(), truth[:, 0], classes)
        print(f"[{name}] medseg vs TotalSegmentator labels, Dice {fmt_dice(ours_gt)}")
    print(f"[{name}] label agreement medseg vs MONAI fp32, Dice per class present: {fmt_dice(dice)}")
    print(f"[{name}] voxels with different labels: {where_they_differ(labels, ref)}")
    if single is not None:
        print(
            f"[{name}] against the network's own one-pass labels (the forward pass above, {stats.precision}), Dice "
            f"per class: medseg {fmt_dice(dice_per_class(labels.cpu(), single, classes))}; "
            f"MONAI {fmt_dice(dice_per_class(ref.cpu(), single, classes))}"
        )
    del single
    differ = labels != ref
    n_conf = int(confident.sum())
    print(
        f"[{name}] where MONAI's top softmax >= 0.9 ({100 * n_conf / confident.numel():.1f} % of voxels) the maps "
        f"differ on {100 * int((differ & confident).sum()) / max(n_conf, 1):.4f} %; elsewhere on "
        f"{100 * int((differ & ~confident).sum()) / max(confident.numel() - n_conf, 1):.2f} %"
    )
    with torch.no_grad():
        shifted = monai_shifted_labels(net, image).cpu()
    print(
        f"[{name}] control: MONAI fp32 vs MONAI fp32 with its window grid shifted by 8 voxels, Dice per class: "
        f"{fmt_dice(dice_per_class(shifted, ref.cpu(), classes))}"
    )
    diagnostics = [("medseg fp32 (tiling auto)", dict(precision="fp32"))]
    if min(dice.values()) < 0.99:
        diagnostics += [
            ("medseg bf16, tiling roi", dict(tiling="roi")),
            ("medseg fp32, tiling roi", dict(precision="fp32", tiling="roi")),
        ]
    with torch.no_grad():
        for label, kw in diagnostics:
            t0 = time.perf_counter()
            other = sliding_window_predict(net, image, ROI, output="labels", **kw)[:, 0].long()
            seconds = time.perf_counter() - t0
            print(f"[{name}] diagnostic {label} vs MONAI fp32 ({seconds:.2f} s, 1 run): "
                  f"{fmt_dice(dice_per_class(other, ref, classes))}")


def run_instance_variant(image, repeats, device, classes) -> None:
    """Ratio for MONAI's default UNet (instance norm): tiling 'auto' must fall back to roi-size windows."""
    net = build_unet("instance").eval().to(device)
    image = image.to(device)
    name = "spine 1.5 mm, INSTANCE-norm UNet (untrained, fixed seed)"
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(device)]
    with torch.no_grad():
        t_monai, ts_monai, (ref, _) = timed(lambda: monai_labels(net, image), repeats, device)
        t_amp, ts_amp, _ = timed(lambda: monai_amp_labels(net, image), repeats, device)
        t_ours, ts_ours, (labels, stats) = timed(
            lambda: sliding_window_predict(net, image, ROI, output="labels", return_stats=True), repeats, device
        )
        # The limit for roi windows: the network calls medseg makes, each as fast as the fastest backend runs one.
        batch = stats.batch_size
        calls = math.ceil(stats.windows / batch)
        windows = torch.rand(batch, 1, *ROI, device=device)
        dtype = resolve_precision("auto", device)
        one = {}
        for backend in ("eager", "channels_last"):
            with using_backend(net, backend, 3) as fwd:
                def run(fwd=fwd):
                    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                        return fwd(windows)
                one[backend] = timed(run, repeats, device)[:2]
    dice = dice_per_class(labels[:, 0].long(), ref, classes)
    print(f"[{name}] medseg plan: {stats.plan}, tiling {stats.tiling}, {stats.precision}, backend {stats.backend}")
    print(
        f"[{name}] time MONAI fp32 / medseg: {t_monai:.2f} s / {t_ours:.2f} s = {t_monai / t_ours:.2f}x; MONAI {amp} "
        f"autocast / medseg: {t_amp:.2f} s / {t_ours:.2f} s = {t_amp / t_ours:.2f}x (runs MONAI {fmt_times(ts_monai)}, "
        f"MONAI {amp} {fmt_times(ts_amp)}, medseg {fmt_times(ts_ours)}); label agreement of an untrained "
        f"network, for information only: {fmt_dice(dice)}"
    )
    for backend, (t, ts) in one.items():
        print(f"[{name}] one network call on {batch} windows of {'x'.join(map(str, ROI))}, {backend}: {t:.3f} s "
              f"(runs {fmt_times(ts)})")
    best = min(one, key=lambda k: one[k][0])
    limit = calls * one[best][0]
    print(
        f"[{name}] medseg / its limit ({calls} calls x the fastest call, {best}): {t_ours:.2f} s / {limit:.2f} s = "
        f"{t_ours / limit:.2f}"
    )


def memory(size: int, classes: int, device: str, runs: int = 3) -> None:
    """Peak memory of each path in its own process; the median of ``runs`` processes per path (the C heap's
    fragmentation makes single CPU figures vary by up to ~150 MB for either library). On CPU one more process per
    path runs with glibc's mmap threshold fixed, which takes that retention out: the live peak."""
    peaks, all_runs, live = {}, {}, {}
    for mode in ("baseline", "monai", "medseg", "medseg-instance"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "_sw_memory.py"), mode, str(size), str(classes), device]
        values = []
        for _ in range(runs):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            values.append(float(out.strip().splitlines()[-1].split("=")[1]))
        peaks[mode], all_runs[mode] = statistics.median(values), values
        if device == "cpu":  # a fixed mmap threshold: freed blocks go back to the system, so the peak is live memory
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
            live[mode] = float(out.strip().splitlines()[-1].split("=")[1])
    print("[memory] peak MB per process: " + "; ".join(f"{m} {'/'.join(f'{v:.0f}' for v in vs)}"
                                                       for m, vs in all_runs.items()))
    monai, ours = peaks["monai"] - peaks["baseline"], peaks["medseg"] - peaks["baseline"]
    inst = peaks["medseg-instance"] - peaks["baseline"]
    print(
        f"[memory {size}^3, {classes} classes, labels, {device}, batch-norm UNet] peak above baseline "
        f"({peaks['baseline']:.0f} MB): MONAI {monai:.0f} MB, medseg {ours:.0f} MB, ratio {ours / monai:.2f}"
    )
    print(
        f"[memory {size}^3, instance-norm UNet, medseg roi tiling] medseg {inst:.0f} MB, "
        f"ratio to the MONAI figure above {inst / monai:.2f}"
    )
    if live:
        m, o = live["monai"] - live["baseline"], live["medseg"] - live["baseline"]
        print(
            f"[memory {size}^3, {classes} classes, labels, cpu, glibc MALLOC_MMAP_THRESHOLD_=131072, 1 process each] "
            f"live peak without the allocator's retained free blocks: MONAI {m:.0f} MB, medseg {o:.0f} MB, "
            f"ratio {o / m:.2f}"
        )


def run_task(task: str, args, repeats: int) -> tuple[int, list]:
    """Train or load the task's network, then every figure on each volume; returns (classes, volumes)."""
    cache = args.cache or str(CACHE if task == "vertebrae" else CACHE.with_name(f"{CACHE.stem}_{task}.pt"))
    if args.smoke:
        cache = f"/tmp/medseg_sw_smoke_{task}.pt"
    image, label = load_spine(TASKS[task])
    net, how = trained_unet(image, label, args, task, cache)
    classes = len(TASKS[task])
    print(f"[{task} task, {classes} classes] network: MONAI UNet 16-32-64-128-256, strides 2, 2 res units, norm=batch "
          f"(eval-mode batch norm is a fixed affine map, so the fully convolutional net gives unchanged results on "
          f"larger tiles); {how}")
    if args.smoke:
        volumes = [("smoke crop", image[:, :, 100:140, 80:120, 90:130], label[:, :, 100:140, 80:120, 90:130])]
    elif args.quick:
        volumes = [("spine crop", image[:, :, 60:156, 40:168, 40:168], label[:, :, 60:156, 40:168, 40:168])]
    else:
        volumes = [
            ("volume 160x224x224 = crop of the spine CT", crop_160(image), crop_160(label)),
            ("spine 1.5 mm", image, label),
        ]
    if args.ct and not args.smoke:
        ct_size = (400, 512, 512)  # a CT-sized volume: the 1.5 mm spine interpolated, for time and memory figures
        volumes.append((f"CT-sized {'x'.join(map(str, ct_size))} (the spine CT interpolated)",
                        F.interpolate(image, size=ct_size, mode="trilinear", align_corners=False), None))
    if not args.train_only:
        for name, vol, truth in volumes:
            # one pass over a CT-sized volume needs ~10 GB of activations: skipped on the CPU
            one_pass = args.device == "cuda" or vol[0, 0].numel() < 40e6
            run_volume(f"{task} task | {name}", net, vol, truth, repeats, args.device, classes, args.compile, one_pass)
    return classes, volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small volumes, 1 repeat, no training if cached")
    parser.add_argument("--smoke", action="store_true", help="tiny crops, 1 thread, 2 training steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-seconds", type=float, default=500.0)
    parser.add_argument("--retrain", action="store_true", help="train again even if weights are cached")
    parser.add_argument("--train-more", type=float, default=0.0, metavar="SECONDS",
                        help="continue training the cached weights for SECONDS (new cosine cycle), then benchmark")
    parser.add_argument("--task", choices=[*sorted(TASKS), "all"], default="all",
                        help="what the benchmark network segments: the spine (2 classes), each vertebra (9), or "
                        "both, one after the other (default)")
    parser.add_argument("--cache", default=None, help="where the trained weights are cached")
    parser.add_argument("--train-only", action="store_true", help="train (or load) the network and stop")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory figure")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figure")
    parser.add_argument("--memory-runs", type=int, default=3, help="processes per path for the memory median")
    parser.add_argument("--ct", action="store_true",
                        help="also a 512x512x400 CT-sized volume (meant for --device cuda)")
    parser.add_argument("--compile", action="store_true",
                        help="also time a torch.compile forward pass (slow to compile)")
    parser.add_argument("--no-instance", action="store_true", help="skip the instance-norm UNet line")
    args = parser.parse_args()
    if args.smoke:  # exercise every code path in seconds: 32^3 windows and patches, one thread
        global ROI, PATCH
        torch.set_num_threads(1)
        ROI, PATCH = (32, 32, 32), 32
        args.retrain, args.train_seconds = True, 60.0
    repeats = args.repeats or (1 if args.quick or args.smoke else 3)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"auto precision {resolve_precision('auto', args.device)}, THP_MEM_ALLOC_ENABLE="
        f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')} (both libraries)"
    )
    if args.memory_only:
        memory(128 if args.quick else 256, 10, args.device, args.memory_runs)
        return
    tasks = ["spine", "vertebrae"] if args.task == "all" else [args.task]
    if args.cache is not None and len(tasks) > 1:
        parser.error("--cache needs a single --task (spine or vertebrae)")
    for task in tasks:
        classes, volumes = run_task(task, args, repeats)
    if args.train_only:
        return
    if not args.no_instance:
        run_instance_variant(volumes[-1][1] if not args.ct else volumes[-2][1], repeats, args.device, classes)
    if not args.no_memory and not args.smoke:
        memory(128 if args.quick else 256, 10, args.device, args.memory_runs)


if __name__ == "__main__":
    main()
