"""``medseg demo``: synthetic data -> train -> predict -> evaluate, on a fresh machine in minutes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from medseg.config.loading import validate_config
from medseg.errors import ConfigError, OutputExistsError
from medseg.evaluation.evaluate import evaluate
from medseg.prediction.batch import predict_paths
from medseg.prediction.predictor import Predictor
from medseg.training.loop import train

log = logging.getLogger(__name__)

POLYP_CONFIG: dict[str, Any] = {
    "data": {
        "kind": "images2d", "root": "data", "image_size": [128, 160], "val_fraction": 0.2, "seed": 0,
        "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 0},
        "augment": {"rotate_degrees": 10, "scale": 0.1},
    },
    "model": {"spatial_dims": 2, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "loss": {"name": "dice_ce"},
    "train": {"max_epochs": 12, "batch_size": 8, "lr": 0.003, "device": "auto", "preview_samples": 4,
              "scheduler": {"name": "cosine", "warmup_epochs": 1}},
}


def run_demo(output: str | Path, *, kind: str = "polyp", epochs: int | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Run the demo into ``output`` and return a summary of where everything is.

    Args:
        output: Demo folder (created; holds ``data/``, ``run/``, ``predictions/``).
        kind: ``polyp`` (2D RGB images) or ``spine`` (3D CT phantom).
        epochs: Training epochs (default: the demo's own).
        overwrite: Replace an existing demo folder.

    Raises:
        OutputExistsError: ``output`` exists and is not empty.
        ConfigError: Unknown ``kind``, or ``epochs`` below 1 (checked before anything is written).
    """
    out = Path(output)
    if kind not in ("polyp", "spine"):
        raise ConfigError(f"--kind: unknown {kind!r}; choose from polyp, spine")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"--epochs: got {epochs!r}; allowed a whole number >= 1")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out}: demo folder exists and is not empty; pass --overwrite or another -o")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "spine":
        from medseg.demo.spine import spine_demo_config, write_spine_demo_data

        raw, data_dir, truth_dir, inputs = spine_demo_config(), *write_spine_demo_data(out / "data")
    else:
        from medseg.data.synthetic.polyp import make_polyp_dataset

        raw = POLYP_CONFIG
        data_dir = make_polyp_dataset(out / "data", n=40, size=(128, 160), seed=0)
        truth_dir, inputs = data_dir / "masks", None
    raw = {**raw, "data": {**raw["data"], "root": str(data_dir)}}
    if epochs is not None:
        raw = {**raw, "train": {**raw["train"], "max_epochs": epochs}}
    cfg = validate_config(raw, source=f"demo ({kind})")
    log.info("demo: synthetic %s data in %s (clearly labelled SYNTHETIC)", kind, data_dir)
    result = train(cfg, run_dir=out / "run")
    predictor = Predictor.from_checkpoint(result.best_checkpoint or result.last_checkpoint)
    val_ids = (out / "run" / "splits" / "val.txt").read_text().split()
    if inputs is None:
        images = {p.stem: p for p in (data_dir / "images").iterdir()}
        inputs = [images[c] for c in val_ids]
    report = predict_paths(predictor, inputs, out / "predictions", overlay=kind == "polyp")
    truth_val = out / "truth-val"
    truth_val.mkdir(exist_ok=True)
    for f in sorted(truth_dir.iterdir()):
        stem = f.name.split(".")[0]
        if stem in val_ids:
            shutil.copy2(f, truth_val / f.name)
    ev = evaluate(out / "predictions", truth_val, labels=predictor.labels, output=out / "metrics.csv")
    fg = [n for n in predictor.labels.names[1:]]
    dice = {n: round(ev.summary[n]["dice"]["mean"], 4) for n in fg if n in ev.summary}
    return {
        "synthetic data": data_dir,
        "run folder": result.run_dir,
        "checkpoint": result.best_checkpoint or result.last_checkpoint,
        "training curves": result.run_dir / "curves.png",
        "predictions": out / "predictions",
        "metrics": ev.csv_path,
        "validation Dice per class": dice,
        "predicted cases": f"{len(report.written)} files in {report.seconds:.1f}s",
    }
