"""Train several configs on one split with one wall-time budget each, then tabulate them with `medseg compare`.

Usage:
    python benchmarks/compare_models.py configs/kvasir.yaml configs/kvasir-deeplabv3.yaml \
        --minutes 10 -o bench-runs/ [--set data.root=/data/Kvasir-SEG ...]

The first config's run draws the train/val split; every later run is given the same split through
``data.train_list`` / ``data.val_list`` (its ``splits/*.txt``), so the table compares models, not splits. Each
run is ``medseg train`` in its own process, stopped (SIGINT) after ``--minutes``: the epochs it finished are in its
``log.json`` and ``checkpoints/best.pt`` (outputs are written atomically at epoch ends). Writes
``OUT/compare.png``, ``OUT/compare.md`` (the table of `medseg compare` with each run's wall time and epochs) and
prints the table. Any config that trains works: the script knows nothing about architectures.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's medseg
from medseg.training.compare import compare_runs, table_text  # noqa: E402


def _train(config: Path, run_dir: Path, sets: list[str], minutes: float) -> tuple[float, str]:
    """One `medseg train` with a wall-time limit; returns (seconds, how it ended)."""
    cmd = [sys.executable, "-m", "medseg.cli.main", "train", str(config), "--run-dir", str(run_dir), "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait(timeout=minutes * 60)
        ended = "finished" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # medseg stops at once; the last finished epoch is on disk
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ended = f"stopped at {minutes:g} min"
    return time.perf_counter() - t0, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="experiment YAML files, one run each")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time limit per run (default 10)")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-runs"), help="folder for the runs")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override for every run")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        parser.error(f"config not found: {', '.join(missing)}")
    args.output.mkdir(parents=True, exist_ok=True)
    runs, notes = [], []
    for i, config in enumerate(args.configs):
        run_dir = args.output / f"{i + 1:02d}-{config.stem}"
        sets = list(args.sets)
        if runs:  # the first run's split for all
            splits = (runs[0] / "splits").resolve()
            sets += [f"data.train_list={splits / 'train.txt'}", f"data.val_list={splits / 'val.txt'}"]
        seconds, ended = _train(config, run_dir, sets, args.minutes)
        print(f"{run_dir.name}: {ended} after {seconds:.0f} s", flush=True)
        if not (run_dir / "log.json").is_file():
            print(f"{run_dir.name}: no finished epoch, left out of the table", file=sys.stderr)
            continue
        runs.append(run_dir)
        notes.append(f"- `{run_dir.name}`: `{config}`, {ended}, {seconds:.0f} s wall time")
    if not runs:
        sys.exit("no run finished an epoch")
    rows = compare_runs(runs, args.output / "compare.png", overwrite=True)
    text = (f"Same split (that of `{runs[0].name}`), at most {args.minutes:g} min of training each, on one "
            "machine, one run at a time.\n\n" + table_text(rows, "md") + "\n" + "\n".join(notes) + "\n")
    (args.output / "compare.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
