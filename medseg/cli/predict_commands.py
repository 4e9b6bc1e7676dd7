"""``medseg predict``, ``export`` and ``evaluate``: using a trained model, and scoring what it predicted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medseg.cli.exits import echo, user_errors
from medseg.cli.options import Irregular, Quiet, Verbose, set_log_level

__all__ = ["evaluate", "export", "predict"]


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint .pt file, run folder, or exported .onnx model; a "
                                                     "folder of fold runs (RUN/fold_K) stands for every fold.")],
    inputs: Annotated[list[Path], typer.Argument(help="More models first (ensemble: class probabilities averaged), "
                                                      "then images, volumes, DICOM series folders, or folders of "
                                                      "them; the first argument that is no model starts the inputs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose output exists (also those made with other "
                                                 "settings, which a rerun refuses).")] = False,
    overlay: Annotated[bool, typer.Option(help="2D: also write <name>_overlay.png.")] = False,
    tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Flip test-time augmentation.")] = None,  # noqa: UP045
    largest_component: Annotated[Optional[bool], typer.Option(  # noqa: UP045
        "--largest-component/--all-components", help="Keep only the largest connected region of each class.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16 or fp16.")] = None,  # noqa: UP045
    backend: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Forward pass: auto (measured, cached probe), eager, channels_last or compile.")] = None,
    overlap: Annotated[Optional[float], typer.Option(help="Sliding-window overlap (0..1).")] = None,  # noqa: UP045
    sw_batch_size: Annotated[Optional[int], typer.Option(help="Windows per forward pass.")] = None,  # noqa: UP045
    roi_size: Annotated[Optional[str], typer.Option(help="Sliding-window size: 96 or 96,96,64.")] = None,  # noqa: UP045
    dicom_seg: Annotated[bool, typer.Option(help="DICOM inputs: also write a DICOM-SEG.")] = False,
    statistics: Annotated[bool, typer.Option(help="Per structure: size, intensity (HU), box, centroid, components, "
                                                  "in <case>.json and OUT/statistics.csv.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="Take shard I of N (0-based, e.g. 0/3; cases sorted by name, "  # noqa: UP045
                                                      "every N-th from the I-th): one job of a SLURM array.")] = None,
    workers: Annotated[int, typer.Option(help="Processes that share the cases (one per GPU with --device cuda).")] = 1,
    claim_timeout: Annotated[float, typer.Option(help="Seconds without heartbeat after which another process takes "
                                                      "a case over.")] = 600.0,
    probabilities: Annotated[bool, typer.Option(help="Also write class probabilities: <case>_probabilities.nii.gz "
                                                     "(4D, class last) or <name>_probabilities.npz (images).")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Two-class models: foreground where p >= T (0 < T < 1).")] = None,  # noqa: UP045,E501
    irregular: Irregular = "refuse",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Segment images or volumes with a model or an ensemble, in the inputs' own size, geometry and label values."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.io.dicom import check_irregular
        from medseg.prediction.batch import predict_paths
        from medseg.prediction.claims import Sharing
        from medseg.prediction.ensemble import load_predictor, split_arguments
        from medseg.prediction.workers import check_parallel, torchrun_rank

        rank, sharing = torchrun_rank(), Sharing.from_options(shard, claim_timeout)
        check_parallel(workers, sharing, rank is not None, spell=_option_name)
        check_irregular(irregular, "--irregular")
        overrides: dict[str, Any] = {"tta": tta, "largest_component": largest_component, "precision": precision,
                     "backend": backend, "overlap": overlap, "sw_batch_size": sw_batch_size, "roi_size": roi_size,
                     "threshold": threshold}
        models, inputs = split_arguments([checkpoint, *inputs])
        predictor = load_predictor(models, device=device, spell=_option_name, **overrides)
        report = predict_paths(predictor, inputs, output, overwrite=overwrite, overlay=overlay, dicom_seg=dicom_seg,
                               statistics=statistics, probabilities=probabilities, sharing=sharing,
                               workers=workers, torchrun=rank is not None, irregular=irregular)
        if rank is not None and rank[0] != 0:
            raise typer.Exit(0 if report.ok else 1)
        echo(f"{len(report.written)} files written to {output}, {len(report.skipped)} existing skipped "
             f"(--overwrite redoes them), {len(report.failed)} failed, {report.seconds:.1f}s")
        if report.workers > 1 or report.elsewhere or shard is not None:
            echo(report.counts())
        for source, message in report.failed:
            text = " ".join(message.split())
            echo(f"failed: {text}" if text.startswith(str(source)) else f"failed: {source}: {text}", err=True)
        if not report.ok:
            raise typer.Exit(1)


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint .pt file or run folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="model.onnx, model.ts, or a bundle folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx, torchscript or bundle.")] = "onnx",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare with PyTorch on a random input.")] = True,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Export a trained model with its labels and preprocessing: ONNX, TorchScript or a MONAI bundle."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.export.run import export_model

        report = export_model(checkpoint, output, format=format, overwrite=overwrite, check=check)
        echo(report.summary())


def _option_name(setting: str) -> str:
    """``sw_batch_size`` -> ``--sw-batch-size`` (how the predict options are named in messages)."""
    return "--" + setting.replace("_", "-")


def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predictions.")],
    truth: Annotated[Path, typer.Option(help="Folder of ground truth.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Per-case CSV (default PRED/metrics.csv).")] = None,  # noqa: UP045,E501
    checkpoint: Annotated[Optional[Path], typer.Option(help="Take the label mapping from this checkpoint.")] = None,  # noqa: UP045,E501
    labels: Annotated[Optional[str], typer.Option(help="Label mapping, e.g. '0=background,255=polyp'.")] = None,  # noqa: UP045,E501
    tolerance: Annotated[int, typer.Option(help="Snap values within this many gray levels (JPEG masks).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing CSV and its .summary.json.")] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Per-case and per-class Dice, IoU, precision, recall, F1, HD95 of predictions against truth."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.evaluation.evaluate import evaluate as run_evaluation
        from medseg.evaluation.evaluate import label_map_from_options

        label_map = label_map_from_options(checkpoint, labels)
        result = run_evaluation(pred, truth, labels=label_map, tolerance=tolerance,
                                output=output or pred / "metrics.csv", overwrite=overwrite)
        typer.echo(result.table())
        typer.echo(f"per-case CSV: {result.csv_path}")
        typer.echo(f"summary: {result.summary_path}")

