"""How medseg scales over processes: training throughput on 1, 2, ... processes of one machine.

Usage::

    python benchmarks/scaling.py train                            # CPU: 1 and 2 processes
    python benchmarks/scaling.py train --nproc 1 2 4 8 --device cuda --images 512 --size 256 --batch 32
    python benchmarks/scaling.py predict                          # cases/min with 1 and 2 workers
    python benchmarks/scaling.py predict --workers 1 2 4 8 --device cuda --cases 64

Each part is a function in ``PARTS``; ``predict`` runs benchmarks/scaling_predict.py (its docstring says how).
``train`` makes a synthetic 2D polyp set, then runs ``medseg train CONFIG --nproc N`` (torchrun on this node; gloo on
CPU, NCCL on CUDA, one GPU per process) with the same global batch for every N, ``--repeats`` times. Throughput is
training samples per second of an epoch's training time (``epoch_time_s`` in ``log.json``; validation and process
start excluded), the first epoch of each run left out as warm-up. It prints the median samples/s for each N and the
scaling efficiency ``throughput(N) / (N x throughput(1))``.

On CPU every run gets all the cores by default: ``OMP_NUM_THREADS = cores // N`` per process, so the figure says
whether N processes of fewer threads beat one process of many. ``--threads T`` fixes T threads per process
instead (the classic scaling figure: N workers of the same size). On a shared machine, the medians of one run
are the figure.
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
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's medseg, in the children too (PYTHONPATH below)
from medseg.data.synthetic.polyp import make_polyp_dataset  # noqa: E402


def _config(data: Path, args: argparse.Namespace) -> dict:
    return {
        "data": {"kind": "images2d", "root": str(data), "image_size": [args.size, args.size], "val_fraction": 0.1,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1,
                  "norm": "instance"},
        "train": {"max_epochs": args.epochs, "batch_size": args.batch, "device": args.device, "preview_samples": 0,
                  "val_every": args.epochs},
    }


def _train_once(cfg_file: Path, run_dir: Path, nproc: int, args: argparse.Namespace) -> list[float]:
    """Samples per second of each epoch after the first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads or max(1, (os.cpu_count() or 1) // nproc))
    cmd = [sys.executable, "-m", "medseg", "train", str(cfg_file), "--run-dir", str(run_dir), "--nproc", str(nproc),
           "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = json.loads((run_dir / "log.json").read_text())
    batch = yaml.safe_load(cfg_file.read_text())["train"]["batch_size"]
    return [r["steps"] * batch / r["epoch_time_s"] for r in records[1:]]


def bench_train(args: argparse.Namespace) -> None:
    """Training throughput for each ``--nproc`` and the scaling efficiency against 1 process."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_polyp_dataset(Path(tmp) / "data", n=args.images, size=(args.size, args.size), seed=0)
        cfg_file = Path(tmp) / "scaling.yaml"
        cfg_file.write_text(yaml.safe_dump(_config(data, args)))
        rates: dict[int, list[float]] = {n: [] for n in args.nproc}
        for repeat in range(args.repeats):
            for n in args.nproc:  # interleaved, so that a busy spell of the machine hits every N alike
                t0 = time.perf_counter()
                rates[n] += _train_once(cfg_file, Path(tmp) / f"run-{n}-{repeat}", n, args)
                print(f"  repeat {repeat + 1}, {n} process(es): {time.perf_counter() - t0:.1f} s wall", flush=True)
    base = statistics.median(rates[args.nproc[0]]) * args.nproc[0]
    threads = f"{args.threads} thread(s)" if args.threads else "cores / N threads"
    print(f"\ntraining throughput, {args.device} ({threads} per process), global batch {args.batch}, "
          f"{args.images} images of {args.size}x{args.size}, median of {args.repeats} runs x {args.epochs - 1} epochs")
    print(f"{'processes':>10} {'samples/s':>10} {'efficiency':>11}")
    for n in args.nproc:
        rate = statistics.median(rates[n])
        print(f"{n:>10} {rate:>10.1f} {rate / (base * n):>11.2f}")


def bench_predict(args: argparse.Namespace) -> None:
    """Prediction cases/min with 1..N workers sharing one output folder (benchmarks/scaling_predict.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scaling_predict

    scaling_predict.main(args.rest)


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {"train": bench_train, "predict": bench_predict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    train = sub.add_parser("train", help="training samples/s on 1..N processes")
    train.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts (first is the base)")
    train.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    train.add_argument("--images", type=int, default=48, help="synthetic training images")
    train.add_argument("--size", type=int, default=64, help="image side in pixels")
    train.add_argument("--batch", type=int, default=8, help="global batch (divisible by every --nproc)")
    train.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    train.add_argument("--repeats", type=int, default=3, help="runs per process count")
    train.add_argument("--threads", type=int, default=0, help="CPU: threads per process (0: cores / N)")
    sub.add_parser("predict", add_help=False,
                   help="prediction cases/min with 1..N workers (--cases, --workers, --repeats, --device)")
    args, rest = parser.parse_known_args()
    if args.part == "predict":
        args.rest = rest
        PARTS["predict"](args)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.epochs < 2:
        parser.error("--epochs must be 2 or more (the first is warm-up)")
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
