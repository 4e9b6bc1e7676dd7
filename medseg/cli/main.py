"""The ``medseg`` command line: thin wrappers over the Python API.

Exit codes: 0 ok, 2 usage or config error (an output that exists without ``--overwrite`` too), 1 data or
runtime error. A :class:`MedsegError` prints one line on stderr, never a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from medseg.errors import ConfigError, MedsegError, OutputExistsError


class OneLineUsageErrors(TyperGroup):
    """The root command group: a usage error (unknown option, ``--overlap abc``, a missing argument) is one
    stderr line, ``error: medseg predict: Invalid value for '--overlap': ... (see medseg predict --help)``, exit 2,
    instead of click's usage box. Everything else ends as with click's standalone mode.

    Typer 0.2x vendors click, older releases use click itself: the errors are recognised by their class names
    (``UsageError``, ``ClickException``, ``Abort``), which both share.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as err:
            kinds = {c.__name__ for c in type(err).__mro__}
            if "NoArgsIsHelpError" in kinds:  # `medseg` or `medseg config` alone: the help, as before
                err.show()  # type: ignore[attr-defined]
                sys.exit(2)
            if "UsageError" in kinds:
                ctx = getattr(err, "ctx", None)
                where = ctx.command_path if ctx is not None else (prog_name or "medseg")
                _echo(f"error: {where}: {_one_line(err.format_message())} (see {where} --help)",  # type: ignore[attr-defined]
                      err=True)
                sys.exit(2)
            if "ClickException" in kinds:
                _echo(f"error: {_one_line(err.format_message())}", err=True)  # type: ignore[attr-defined]
                sys.exit(int(getattr(err, "exit_code", 1)))
            if "Abort" in kinds:
                _echo("error: aborted", err=True)
                sys.exit(1)
            raise
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="medseg",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="medseg: medical-image segmentation on MONAI and PyTorch.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check or show a config file.")
app.add_typer(config_app, name="config")

Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: key.path=value.")]  # noqa: UP045
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
Irregular = Annotated[str, typer.Option(help="Tilted, unevenly spaced or sheared volumes: refuse, or resample onto "
                                             "a regular grid (stated in the sidecar).")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn medseg errors into one stderr line and an exit code (2 config or usage, 1 data/runtime).

    An output that exists without ``--overwrite`` is a usage refusal (exit 2), like a rerun with other settings.
    """
    try:
        yield
    except (ConfigError, OutputExistsError) as err:
        _error(f"error: {_one_line(err)}")
        raise typer.Exit(2) from None
    except MedsegError as err:
        _error(f"error: {_one_line(err)}")
        raise typer.Exit(1) from None
    except OSError as err:  # a user path the io layer did not anticipate (permissions, full disk, ...)
        where = f"{err.filename}: " if err.filename else ""
        _error(f"error: {where}{err.strerror or _one_line(err)}")
        raise typer.Exit(1) from None
    except MemoryError:
        _error("error: out of memory; the input is too large for this machine (try a smaller input or "
               "--sw-batch-size 1)")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        from medseg.training.rank_errors import under_launcher

        if not under_launcher():  # under `--nproc N` the launcher got the Ctrl-C too and tells it once
            _error("interrupted")
        raise typer.Exit(130) from None


def _error(line: str) -> None:
    """Print an error line on stderr; a process of ``medseg train --nproc N`` other than rank 0 hands it to the
    launcher instead (:mod:`medseg.training.rank_errors`), so the error all processes meet is printed once."""
    from medseg.training.rank_errors import hand_over

    if hand_over(line):
        _echo(line, err=True)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _echo(text: str, *, err: bool = False) -> None:
    """Echo text that may hold non-UTF-8 file names (surrogate escapes) as their original bytes."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    typer.echo(data, err=err)


def _print_version(value: bool) -> None:
    if value:
        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the medseg version and exit.")] = False,
) -> None:
    """medseg: medical-image segmentation on MONAI and PyTorch."""


def _logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for chatty in ("highdicom", "pydicom"):  # their INFO lines (one per copied attribute) drown medseg's
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


@app.command()
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
    _logging(verbose, quiet)
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
            from medseg.training.distributed import launch_local, micro_batch_size, preflight

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


@app.command()
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
    _logging(verbose, quiet)
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
        _echo(f"{len(report.written)} files written to {output}, {len(report.skipped)} existing skipped "
                   f"(--overwrite redoes them), {len(report.failed)} failed, {report.seconds:.1f}s")
        if report.workers > 1 or report.elsewhere or shard is not None:
            _echo(report.counts())
        for source, message in report.failed:
            text = " ".join(message.split())
            _echo(f"failed: {text}" if text.startswith(str(source)) else f"failed: {source}: {text}", err=True)
        if not report.ok:
            raise typer.Exit(1)


@app.command()
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
    _logging(verbose, quiet)
    with user_errors():
        from medseg.export.run import export_model

        report = export_model(checkpoint, output, format=format, overwrite=overwrite, check=check)
        _echo(report.summary())


def _option_name(setting: str) -> str:
    """``sw_batch_size`` -> ``--sw-batch-size`` (how the predict options are named in messages)."""
    return "--" + setting.replace("_", "-")


@app.command()
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
    _logging(verbose, quiet)
    with user_errors():
        from medseg.evaluation.evaluate import evaluate as run_evaluation
        from medseg.evaluation.evaluate import label_map_from_options

        label_map = label_map_from_options(checkpoint, labels)
        result = run_evaluation(pred, truth, labels=label_map, tolerance=tolerance,
                                output=output or pred / "metrics.csv", overwrite=overwrite)
        typer.echo(result.table())
        typer.echo(f"per-case CSV: {result.csv_path}")
        typer.echo(f"summary: {result.summary_path}")


@app.command()
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


@app.command("postprocess-select")
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
    _logging(verbose, quiet)
    with user_errors():
        from medseg.training.postprocess_select import select_postprocessing_runs

        for selection in select_postprocessing_runs(run_dirs, min_gain=min_gain, overwrite=overwrite):
            _echo(f"{selection.run_dir}: {selection.classes[0].n_cases if selection.classes else 0} validation cases")
            _echo(selection.table())
            _echo(f"written: {selection.path}")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="Experiment YAML.")], sets: Sets = None) -> None:
    """Validate a config; exit 2 with every problem listed if it is invalid."""
    with user_errors():
        from medseg.config import load_config

        load_config(config, list(sets or []))
        typer.echo(f"{config}: ok")


@config_app.command("show")
def config_show(config: Annotated[Path, typer.Argument(help="Experiment YAML.")], sets: Sets = None) -> None:
    """Print the resolved config (defaults filled in, paths absolute) as YAML."""
    with user_errors():
        from medseg.config import dump_config, load_config

        typer.echo(dump_config(load_config(config, list(sets or []))), nl=False)


@app.command()
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
    _logging(verbose, quiet)
    with user_errors():
        from medseg.demo.run import run_demo

        summary = run_demo(output, kind=kind, epochs=epochs, overwrite=overwrite)
        for key, value in summary.items():
            typer.echo(f"{key}: {value}")


@app.command()
def synth(
    kind: Annotated[str, typer.Argument(help="polyp (Kvasir-like 2D) or spine (CT phantom volumes).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write.")],
    n: Annotated[Optional[int], typer.Option(help="Number of cases.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a folder that is not empty, replacing all in it.")] = False,  # noqa: E501
) -> None:
    """Write a synthetic dataset in the layout configs/kvasir.yaml or configs/spine.yaml expects."""
    _logging(False, False)
    with user_errors():
        from medseg.data.synthetic import make_synthetic

        folder = make_synthetic(kind, output, n=n, seed=seed, overwrite=overwrite)
        typer.echo(f"synthetic {kind} dataset: {folder}")


@app.command()
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
    _logging(verbose, False)
    with user_errors():
        from medseg.planning.planner import plan_dataset

        result = plan_dataset(data_dir, output, device_memory=device_memory, kind=kind, overwrite=overwrite,
                              progress=sys.stderr.isatty())
        _echo(result.plan.summary())
        _echo(f"config: {result.config_path}\nfingerprint: {result.fingerprint_path}")


@app.command()
def preprocess(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (data.kind volumes3d or slices2d).")],
    sets: Sets = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes that preprocess cases at once.")] = 1,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Resample and normalise every volume of a config once, into the cache that training reads (data.cache_dir)."""
    _logging(verbose, quiet)
    with user_errors():
        from medseg.config import load_config
        from medseg.data.preprocessed_cache import preprocess_dataset

        cfg = load_config(config, list(sets or []))
        report = preprocess_dataset(cfg.data, workers=workers, progress=sys.stderr.isatty())
        _echo(f"preprocessed cache: {report.summary()}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A volume file or a folder with DICOM series.")],
    irregular: Irregular = "refuse",
    verbose: Verbose = False,
) -> None:
    """List the image series found in a folder (or describe one volume file), and why anything was skipped; exit 1
    when no volume can be read from it."""
    _logging(verbose, False)
    with user_errors():
        from medseg.errors import DataError
        from medseg.io.describe import describe
        from medseg.io.dicom import check_irregular

        check_irregular(irregular, "--irregular")
        found = describe(path, irregular=irregular)
        _echo(found.text)
        if found.problem is not None:  # the table above says what each series is; this line why none is read
            raise DataError(found.problem)


@app.command()
def doctor() -> None:
    """Check the installation: versions, CUDA, CPU bf16, DICOM decoders, free disk; exit 1 if a part is missing."""
    with user_errors():
        from medseg.doctor import check_environment

        report = check_environment()
        _echo(report.text())
        if not report.ok:
            _echo(f"error: missing {'; '.join(report.missing)}", err=True)
            raise typer.Exit(1)


def main() -> None:
    """Console-script entry point (also ``python -m medseg``)."""
    from medseg.processes import prefer_huge_pages

    prefer_huge_pages()  # before anything imports torch: PyTorch reads the setting once
    app(prog_name="medseg")


if __name__ == "__main__":
    main()
