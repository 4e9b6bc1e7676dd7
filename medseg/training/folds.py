"""Cross-validation: one run per fold, each fold's validation cases predicted, and the score over their union.

``medseg train CONFIG --fold K`` (or ``--fold all``) with ``data.folds: N`` in the config:

```
RUN_DIR/fold_K/         an ordinary run folder (config, splits, checkpoints, log, curves)
RUN_DIR/cv_predictions/ every fold's validation cases, predicted by that fold's best checkpoint, written back
                        at the original geometry and label values (as medseg predict writes them)
RUN_DIR/cv_metrics.csv  per case and class over the union, once every fold has predicted
                        (+ cv_metrics.summary.json: per-class mean Dice and the rest)
```

Folds may run one by one (``--fold all``) or side by side in separate processes or jobs (``--fold 0`` ...
``--fold 4`` with the same ``-o``): whichever finishes the last fold writes the cross-validation score.
An interrupted fold resumes with ``--resume RUN_DIR``; finished folds are not trained again and predictions
already written are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.config.kinds import DataKind
from medseg.config.schema import ExperimentConfig
from medseg.data.pairing import Pair, find_pairs_from_config
from medseg.data.splits import read_split_file
from medseg.errors import ConfigError, DataError
from medseg.evaluation.evaluate import EvaluationResult, case_name, evaluate
from medseg.prediction.batch import predict_paths
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume_cases import one_channel_case_name
from medseg.training.loop import TrainResult, train

__all__ = ["FoldsResult", "parse_fold_option", "prediction_name", "train_folds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldsResult:
    """The folds trained in this call, and the cross-validation score once every fold has predicted."""

    run_dir: Path
    folds: dict[int, TrainResult]
    cv: EvaluationResult | None


def parse_fold_option(text: str, folds: int | None) -> list[int]:
    """Read ``--fold``: a fold number or ``all``.

    Raises:
        ConfigError: The config has no ``data.folds``, or the value is not a fold.

    Example:
        >>> parse_fold_option("all", 3), parse_fold_option("1", 3)
        ([0, 1, 2], [1])
    """
    if folds is None:
        raise ConfigError(f"--fold {text}: the config has no data.folds; add it (e.g. --set data.folds=5)")
    value = text.strip().lower()
    if value == "all":
        return list(range(folds))
    if value.isdigit() and int(value) < folds:
        return [int(value)]
    raise ConfigError(f"--fold: got {text!r}; allowed 0..{folds - 1} (data.folds is {folds}) or 'all'")


def prediction_name(pair: Pair, kind: DataKind | str) -> str:
    """The name (file name less suffix) of a case's prediction in ``cv_predictions/``, as ``medseg predict`` names
    it: the case id for a multi-channel case and for nnU-Net's ``case_0000.nii.gz`` (``case``), else the image's
    name less its suffix.

    Example:
        >>> prediction_name(Pair("la_003", Path("imagesTr/la_003_0000.nii.gz"), Path("labelsTr/la_003.nii.gz")),
        ...                 "volumes3d")
        'la_003'
    """
    if len(pair.channels) > 1:
        return pair.case_id
    return one_channel_case_name(pair.image) if DataKind(kind).segments_volumes else case_name(pair.image)


def _fold_config(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    data = cfg.data.model_copy(update={"fold": fold})
    return cfg.model_copy(update={"data": data})


def train_folds(cfg: ExperimentConfig, folds: list[int], *, run_dir: str | Path, resume: bool = False,
                overwrite: bool = False, force: bool = False, progress: bool = True) -> FoldsResult:
    """Train the given folds into ``run_dir/fold_K``, predict each fold's validation cases, and score the union
    when every fold of ``data.folds`` has predicted.

    Args:
        cfg: The experiment, with ``data.folds``.
        folds: Fold numbers (see :func:`parse_fold_option`).
        run_dir: The cross-validation folder.
        resume: Continue interrupted folds (``fold_K/checkpoints/last.pt``); folds not started yet start.
        overwrite: Replace existing fold folders.
        force: Resume although the config changed.
        progress: Progress bars on stderr.

    Raises:
        ConfigError: No ``data.folds``, or a fold out of range.
        MedsegError: Whatever training or prediction raise.
    """
    if cfg.data.folds is None:
        raise ConfigError("data.folds: not set; cross-validation needs it (e.g. --set data.folds=5)")
    bad = [k for k in folds if not 0 <= k < cfg.data.folds]
    if bad:
        raise ConfigError(f"--fold: {bad[0]} is not a fold of data.folds {cfg.data.folds}")
    root = Path(run_dir)
    pairs = {p.case_id: p for p in find_pairs_from_config(cfg.data)}
    trained: dict[int, TrainResult] = {}
    for k in folds:
        fold_dir = root / f"fold_{k}"
        again = resume and (fold_dir / "checkpoints" / "last.pt").is_file()
        log.info("fold %d of %d: %s", k, cfg.data.folds, "resuming" if again else "training")
        result = train(_fold_config(cfg, k), run_dir=fold_dir, resume=again, overwrite=overwrite, force=force,
                       progress=progress)
        trained[k] = result
        val_ids = read_split_file(fold_dir / "splits" / "val.txt")
        checkpoint = result.best_checkpoint or result.last_checkpoint
        predictor = Predictor.from_checkpoint(checkpoint, postprocessing=False)  # selected from these
        inputs = [f for c in val_ids for f in pairs[c].channels]  # a multi-channel case: all its files
        report = predict_paths(predictor, inputs, root / "cv_predictions", progress=progress)
        if report.failed:
            raise DataError(f"fold {k}: {len(report.failed)} validation case(s) failed to predict: "
                            f"{report.failed[0][0]}: {report.failed[0][1]}")
    return FoldsResult(root, trained, _score_if_complete(cfg, root, pairs))


def _score_if_complete(cfg: ExperimentConfig, root: Path, pairs: dict[str, Pair]) -> EvaluationResult | None:
    """Score the union of the folds' predictions once every fold has its validation predictions."""
    assert cfg.data.folds is not None
    folders = [root / f"fold_{k}" for k in range(cfg.data.folds)]
    if not all((f / "splits" / "val.txt").is_file() for f in folders):
        return None
    val_ids = [c for f in folders for c in read_split_file(f / "splits" / "val.txt")]
    predicted = {case_name(p) for p in (root / "cv_predictions").iterdir() if not p.name.startswith(".")} \
        if (root / "cv_predictions").is_dir() else set()  # hidden: the per-case records, claims
    truths = {prediction_name(pairs[c], cfg.data.kind): pairs[c].mask for c in val_ids}
    if not set(truths) <= predicted:
        return None
    checkpoint = folders[0] / "checkpoints" / "last.pt"
    labels = Predictor.from_checkpoint(checkpoint, postprocessing=False).labels
    return evaluate(root / "cv_predictions", truths, labels=labels, tolerance=cfg.data.labels.tolerance,
                    output=root / "cv_metrics.csv", overwrite=True)
