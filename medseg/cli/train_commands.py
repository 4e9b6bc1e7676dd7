"""``medseg train``, ``compare`` and ``postprocess-select``: training runs and what is read from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medseg.cli.exits import echo, user_errors
from medseg.cli.options import Quiet, Sets, Verbose, set_log_level
from medseg.errors import ConfigError

__all__ = ["compare", "postprocess_select", "train"]


def train(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    sets: Sets = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", "-o", help="Run folder (default runs/<name>-<time>).")] = None,  # noqa: UP045,E501
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder.")] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    force: Annotated[bool, typer.Option(help="Resume even if the config changed.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (overrides train.device).")] = None,  # noqa: UP045,E501
    fold: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Cross-validation (needs data.folds): a fold number or 'all'; runs go to RUN/fold_K.")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Train on N processes on this machine (torchrun; one per GPU).")] = None,  # noqa: UP045,E501
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train a model from a YAML config; prints the run folder and best checkpoint."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.config import load_config
        from medseg.training.loop import default_run_dir
        from medseg.training.loop import train as run_training

        overrides = list(sets or []) + ([f"train.device={device}"] if device else [])
        cfg = load_config(config, overrides)
        if resume is not None and run_dir is not None and resume.resolve() != run_dir.resolve():
            raise ConfigError(f"--resume {resume} and --run-dir {run_dir} name different folders; give one")
        folder = resume or run_dir or default_run_dir(config, cfg)
        if fold is not None:
            if (nproc or 1) != 1 or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
                raise ConfigError("--fold: cross-validation runs in one process per fold for now; start one job per "
                                  "fold (--fold 0, --fold 1, ... with the same -o) instead of --nproc or torchrun")
            _train_folds(cfg, fold, folder, resume=resume is not None, overwrite=overwrite, force=force)
            return
        if nproc is not None and nproc != 1:
            from medseg.training.distributed import micro_batch_size
            from medseg.training.launcher import launch_local, preflight

            micro_batch_size(cfg.train.batch_size, max(1, nproc), cfg.train.grad_accumulation)  # refuse before starting
            preflight(cfg.train, max(1, nproc), run_dir=folder, resume=resume is not None, overwrite=overwrite)
            args = [a for s in overrides for a in ("--set", s)] + (["--resume"] if resume else ["--run-dir"])
            flags = [f for f, on in (("--overwrite", overwrite), ("--force", force), ("-v", verbose), ("-q", quiet))
                     if on]
            code = launch_local(nproc, ["train", str(config), *args, str(folder), *flags], run_dir=folder)
            if code:  # rank 0 printed the error
                raise typer.Exit(code)
            return
        result = run_training(cfg, run_dir=folder, resume=resume is not None, overwrite=overwrite, force=force)
        if result.rank != 0:
            return
        typer.echo(f"run folder: {result.run_dir}")
        typer.echo(f"last checkpoint: {result.last_checkpoint}")
        if result.best_checkpoint:
            typer.echo(f"best checkpoint: {result.best_checkpoint} "
                       f"(val_{cfg.train.best_metric} {result.best_metric:.4f} at epoch {result.best_epoch})")


def _train_folds(cfg: Any, fold: str, folder: Path, *, resume: bool, overwrite: bool, force: bool) -> None:
    from medseg.training.folds import parse_fold_option, train_folds

    result = train_folds(cfg, parse_fold_option(fold, cfg.data.folds), run_dir=folder, resume=resume,
                         overwrite=overwrite, force=force)
    for k, run in result.folds.items():
        best = f"val_{cfg.train.best_metric} {run.best_metric:.4f}" if run.best_metric is not None else "no validation"
        typer.echo(f"fold {k}: {run.run_dir} ({best})")
    if result.cv is None:
        typer.echo(f"cross-validation: waiting for the other folds of {cfg.data.folds} in {folder}")
    else:
        typer.echo(f"cross-validation over {cfg.data.folds} folds: {folder / 'cv_metrics.csv'}")
        for name, metrics in result.cv.summary.items():
            if "dice" in metrics:
                typer.echo(f"  {name}: Dice {metrics['dice']['mean']:.4f} (n={int(metrics['dice']['n'])})")


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders of `medseg train` (each with log.json).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG of the runs' curves overlaid.")],
    table: Annotated[Optional[Path], typer.Option(help="Also write the table as .csv (full precision) or .md.")] = None,  # noqa: UP045,E501
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Overlay the curves of several runs and print each run's best epoch with its validation metrics."""
    with user_errors():
        from medseg.training.compare import compare_runs, table_text

        rows = compare_runs(run_dirs, output, table=table, overwrite=overwrite)
        typer.echo(table_text(rows, "md"), nl=False)
        typer.echo(f"curves: {output}" + (f"\ntable: {table}" if table is not None else ""))


def postprocess_select(
    run_dirs: Annotated[list[Path], typer.Argument(help="Cross-validation folders (with fold_K/ and "
                                                         "cv_predictions/), or one fold_K of one.")],
    min_gain: Annotated[float, typer.Option(help="Rise of the mean Dice an option needs to be chosen.")] = 0.001,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing postprocessing.json.")] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Per class, keep the largest component, remove small ones or neither: whichever raises the CV Dice.

    The choice is written to RUN/postprocessing.json, which medseg predict applies for the run's checkpoints."""
    set_log_level(verbose, quiet)
    with user_errors():
        from medseg.training.postprocess_select import select_postprocessing_runs

        for selection in select_postprocessing_runs(run_dirs, min_gain=min_gain, overwrite=overwrite):
            echo(f"{selection.run_dir}: {selection.classes[0].n_cases if selection.classes else 0} validation cases")
            echo(selection.table())
            echo(f"written: {selection.path}")

