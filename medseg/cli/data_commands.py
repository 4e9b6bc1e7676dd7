"""``medseg demo``, ``synth``, ``plan``, ``preprocess`` and ``inspect``: data sets made, planned, cached, read."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from medseg.cli.exits import echo, user_errors
from medseg.cli.options import Irregular, Quiet, Sets, Verbose, set_log_level

__all__ = ["demo", "inspect", "plan", "preprocess", "synth"]


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for data, run and predictions.")] = Path(
        "medseg-demo"),
    kind: Annotated[str, typer.Option(help="polyp (2D RGB) or spine (3D CT phantom).")] = "polyp",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the demo's own).")] = None,  # noqa: UP045,E501
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic dataset, train briefly, predict and evaluate: the whole loop in minutes on CPU."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.demo.run import run_demo

        summary = run_demo(output, kind=kind, epochs=epochs, overwrite=overwrite)
        for key, value in summary.items():
            typer.echo(f"{key}: {value}")


def synth(
    kind: Annotated[str, typer.Argument(help="polyp (Kvasir-like 2D) or spine (CT phantom volumes).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write.")],
    n: Annotated[Optional[int], typer.Option(help="Number of cases.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a folder that is not empty, replacing all in it.")] = False,  # noqa: E501
) -> None:
    """Write a synthetic dataset in the layout configs/kvasir.yaml or configs/spine.yaml expects."""
    set_log_level(False, False)
    with user_errors():
        from medseg.data.synthetic import make_synthetic

        folder = make_synthetic(kind, output, n=n, seed=seed, overwrite=overwrite)
        typer.echo(f"synthetic {kind} dataset: {folder}")


def plan(
    data_dir: Annotated[Path, typer.Argument(
        help="Data set: imagesTr/ + labelsTr/ (nnU-Net raw) or images/ + masks/.")],
    output: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--output", "-o",
        help="Config to write (default: NAME-plan.yaml for a data set NAME); its .fingerprint.json beside it.",
    )] = None,
    device_memory: Annotated[str, typer.Option(
        help="Memory to plan for: a GPU size such as 24GB, 'cpu' (8 GiB budget), or 'auto' (this machine).")] = "auto",
    kind: Annotated[Optional[str], typer.Option(help="volumes3d or images2d (default: from the files).")] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option(help="Replace an existing config and fingerprint.")] = False,
    verbose: Verbose = False,
) -> None:
    """Fingerprint a data set and write a complete config for it, each chosen value with the reason."""
    set_log_level(verbose, False)
    with user_errors():
        from medseg.planning.planner import plan_dataset

        result = plan_dataset(data_dir, output, device_memory=device_memory, kind=kind, overwrite=overwrite,
                              progress=sys.stderr.isatty())
        echo(result.plan.summary())
        echo(f"config: {result.config_path}\nfingerprint: {result.fingerprint_path}")


def preprocess(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (data.kind volumes3d or slices2d).")],
    sets: Sets = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes that preprocess cases at once.")] = 1,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Resample and normalise every volume of a config once, into the cache that training reads (data.cache_dir)."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.config import load_config
        from medseg.data.preprocessed_cache import preprocess_dataset

        cfg = load_config(config, list(sets or []))
        report = preprocess_dataset(cfg.data, workers=workers, progress=sys.stderr.isatty())
        echo(f"preprocessed cache: {report.summary()}")


def inspect(
    path: Annotated[Path, typer.Argument(help="A volume file or a folder with DICOM series.")],
    irregular: Irregular = "refuse",
    verbose: Verbose = False,
) -> None:
    """List the image series found in a folder (or describe one volume file), and why anything was skipped; exit 1
    when no volume can be read from it."""
    set_log_level(verbose, False)
    with user_errors():
        from medseg.errors import DataError
        from medseg.io.describe import describe
        from medseg.io.dicom import check_irregular

        check_irregular(irregular, "--irregular")
        found = describe(path, irregular=irregular)
        echo(found.text)
        if found.problem is not None:  # the table above says what each series is; this line why none is read
            raise DataError(found.problem)
