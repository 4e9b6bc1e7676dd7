"""Choose each class's postprocessing from the cross-validation predictions (``medseg postprocess-select``).

For a cross-validation folder (``RUN/fold_K/`` and ``RUN/cv_predictions/``, see :mod:`medseg.training.folds`), or
one fold of it, every validation prediction is compared with its mask, class by class, under each option:

- ``none``: the prediction as it is;
- ``largest_component``: only the class's largest connected component kept;
- ``remove_small`` with a few ``min_size`` values: components under that many voxels (pixels in 2D) removed. The
  values come from the sizes of the components that are not their case's largest (the quartiles and the
  largest of them, each plus one, so that a value removes components up to that size).

The option with the best mean Dice over the cases is kept if it beats ``none`` by more than ``min_gain``; ties go
to the simpler option (the order above, smaller ``min_size`` first). Classes are decided independently: an
option removes only its own class's voxels, so one class's choice does not change another's Dice.

The Dice of every option comes from one pass over the files: per case and class, the prediction's connected
components with their sizes and their overlap with the mask. Dice = 2 TP / (|P| + |T|), 1 when both are empty
(the policy of :mod:`medseg.metrics.case_metrics`, so ``dice_before`` is ``cv_metrics.summary.json``'s mean).

The decision goes to ``RUN/postprocessing.json`` (atomically), which ``medseg predict`` applies for checkpoints of
this run (:func:`medseg.prediction.postprocess.find_postprocessing`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.atomic import write_json_atomic
from medseg.config.loading import load_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.splits import read_split_file
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.evaluation.evaluate import label_files, read_label_values
from medseg.prediction.postprocess import POSTPROCESSING_FILE, POSTPROCESSING_FORMAT, ComponentRule
from medseg.progress import progress_bar
from medseg.training.folds import prediction_name

__all__ = ["ClassChoice", "Selection", "candidate_sizes", "choose_rule", "select_postprocessing",
           "select_postprocessing_runs"]

log = logging.getLogger(__name__)

#: Quantiles of the non-largest components' sizes that become ``remove_small`` candidates.
SIZE_QUANTILES = (0.25, 0.5, 0.75, 1.0)
#: Default smallest gain in mean Dice for an option to be chosen over ``none``.
MIN_GAIN = 1e-3


@dataclass(frozen=True)
class ClassChoice:
    """One class's decision and the Dice figures behind it.

    Attributes:
        name: The class name.
        index: The class index (1..N-1).
        rule: The chosen rule.
        dice_before: Mean Dice over the cases without postprocessing.
        dice_after: Mean Dice with ``rule`` applied.
        n_cases: Cases scored.
        candidates: Mean Dice of every option tried (``none``, ``largest_component``, ``remove_small<N>``).
    """

    name: str
    index: int
    rule: ComponentRule
    dice_before: float
    dice_after: float
    n_cases: int
    candidates: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The decisions for one run folder and where they were written."""

    run_dir: Path
    path: Path
    classes: list[ClassChoice]

    def table(self) -> str:
        """A plain-text table: class, Dice before, Dice after, option."""
        lines = [f"{'class':<20} {'dice_before':>11} {'dice_after':>10}  option"]
        lines += [f"{c.name:<20} {c.dice_before:>11.4f} {c.dice_after:>10.4f}  {c.rule.describe()}"
                  for c in self.classes]
        return "\n".join(lines)


@dataclass
class _Components:
    """One case and class: the prediction's component sizes, their overlap with the mask, the mask's size."""

    sizes: np.ndarray
    overlaps: np.ndarray
    truth: int

    def dice(self, keep: np.ndarray) -> float:
        predicted = int(self.sizes[keep].sum())
        denominator = predicted + self.truth
        return 1.0 if denominator == 0 else 2.0 * int(self.overlaps[keep].sum()) / denominator

    def keep(self, rule: ComponentRule) -> np.ndarray:
        if rule.option == "largest_component":
            keep = np.zeros(self.sizes.shape, dtype=bool)
            if self.sizes.size:
                keep[self.sizes.argmax()] = True  # the first of equal largest, as keep_largest_component
            return keep
        if rule.option == "remove_small":
            return np.asarray(self.sizes >= rule.min_size)
        return np.ones(self.sizes.shape, dtype=bool)


def _components(pred: np.ndarray, truth: np.ndarray) -> _Components:
    labelled, n = ndimage.label(pred)  # face connectivity, as medseg.prediction.postprocess
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    overlaps = np.bincount(labelled[truth].ravel(), minlength=n + 1)[1:]
    return _Components(sizes, overlaps, int(truth.sum()))


def candidate_sizes(component_sizes: Sequence[np.ndarray]) -> list[int]:
    """The ``min_size`` values to try: from the sizes of the components that are not their case's largest.

    Args:
        component_sizes: Per case, the sizes of one class's predicted components.

    Returns:
        Ascending distinct values ``q + 1`` for the quantiles ``q`` in :data:`SIZE_QUANTILES` (nearest higher
        size); empty when no case has more than one component.

    Example:
        >>> candidate_sizes([np.array([100, 3, 5]), np.array([80]), np.array([7, 90, 2])])
        [4, 6, 8]
        >>> candidate_sizes([np.array([100]), np.array([])])
        []
    """
    strays = [np.delete(s, s.argmax()) for s in component_sizes if s.size > 1]
    if not strays:
        return []
    pooled = np.concatenate(strays)
    return sorted({int(np.quantile(pooled, q, method="higher")) + 1 for q in SIZE_QUANTILES})


def choose_rule(dice: dict[ComponentRule, float], min_gain: float) -> ComponentRule:
    """The rule with the best mean Dice if it beats ``none`` by more than ``min_gain``, else ``none``.

    Ties go to the rule listed first (list the simpler first).

    Example:
        >>> none, largest = ComponentRule("none"), ComponentRule("largest_component")
        >>> small = ComponentRule("remove_small", 5)
        >>> choose_rule({none: 0.80, largest: 0.85, small: 0.85}, 0.001).option
        'largest_component'
        >>> choose_rule({none: 0.80, largest: 0.8005}, 0.001).option
        'none'
    """
    none = ComponentRule("none")
    best, best_dice = none, dice[none]
    for rule, value in dice.items():
        if rule != none and (best == none or value > best_dice):
            best, best_dice = rule, value
    return best if best_dice - dice[none] > min_gain else none


# ----------------------------------------------------------------------------------------- the run's cases
@dataclass(frozen=True)
class _Cases:
    labels: LabelMap
    tolerance: int
    pairs: list[tuple[str, Path, Path]]  # case name, prediction, truth


def _fold_folders(run_dir: Path) -> tuple[list[Path], Path]:
    """The fold runs whose validation cases are scored, and the folder of their predictions."""
    no_predictions = (f"{run_dir}: no validation predictions here (no cv_predictions/ beside fold_K/ runs); "
                      "postprocess-select needs a cross-validation run: medseg train CONFIG --set data.folds=5 "
                      f"--fold all -o {run_dir}")
    if not run_dir.exists():
        raise DataError(f"{run_dir}: run folder not found")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: is a file; give a run folder (the -o folder of medseg train --fold all)")
    folds = sorted((p for p in run_dir.iterdir() if p.is_dir() and re.fullmatch(r"fold_\d+", p.name)),
                   key=lambda p: int(p.name[5:]))
    if folds:
        if not (run_dir / "cv_predictions").is_dir():
            raise DataError(no_predictions)
        cfg = _config(folds[0])
        expected = cfg.data.folds or len(folds)
        missing = [k for k in range(expected)
                   if not (run_dir / f"fold_{k}" / "splits" / "val.txt").is_file()]
        if missing:
            raise DataError(f"{run_dir}: fold(s) {', '.join(map(str, missing))} of {expected} not trained yet; "
                            f"finish them (medseg train CONFIG --fold all --resume {run_dir})")
        return [run_dir / f"fold_{k}" for k in range(expected)], run_dir / "cv_predictions"
    if re.fullmatch(r"fold_\d+", run_dir.name) and (run_dir.parent / "cv_predictions").is_dir():
        return [run_dir], run_dir.parent / "cv_predictions"
    raise DataError(no_predictions)


def _config(fold: Path) -> Any:
    path = fold / "config.yaml"
    if not path.is_file():
        raise DataError(f"{fold}: no config.yaml; not a medseg run folder")
    try:
        return load_config(path)
    except ConfigError as err:
        raise DataError(f"{path}: the run's saved config does not load: {err}") from None


def _labels(fold: Path) -> LabelMap:
    path = fold / "labels.json"
    try:
        return LabelMap.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"{path}: unreadable class list ({' '.join(str(err).split())[:120]})") from None


def _cases(run_dir: Path) -> _Cases:
    folds, predictions = _fold_folders(run_dir)
    cfg = _config(folds[0])
    labels = _labels(folds[0])
    found = find_pairs_from_config(cfg.data)
    by_id = {p.case_id: prediction_name(p, cfg.data.kind) for p in found}
    truths = {by_id[p.case_id]: p.mask for p in found}
    predicted = label_files(predictions, "prediction")
    cv_dir = predictions.parent  # the cross-validation folder, also when run_dir is one fold of it
    pairs: list[tuple[str, Path, Path]] = []
    for fold in folds:
        for case_id in read_split_file(fold / "splits" / "val.txt"):
            if case_id not in by_id:
                raise DataError(f"{fold}/splits/val.txt: case {case_id!r} is not in the data set of the run's "
                                f"config ({cfg.data.root}); was the data moved?")
            name = by_id[case_id]
            if name not in predicted:
                raise DataError(f"{predictions}: no prediction for validation case {name!r} of {fold.name}; "
                                f"finish the folds (medseg train CONFIG --fold all --resume {cv_dir})")
            pairs.append((name, predicted[name], truths[name]))
    return _Cases(labels, cfg.data.labels.tolerance, pairs)


# ----------------------------------------------------------------------------------------------- selection
def select_postprocessing(run_dir: str | Path, *, min_gain: float = MIN_GAIN, overwrite: bool = False,
                          progress: bool = True) -> Selection:
    """Choose each foreground class's postprocessing from a run's validation predictions and write it.

    Args:
        run_dir: A cross-validation folder (``RUN`` with ``fold_K/`` and ``cv_predictions/``), or one ``fold_K``
            of it (its own validation cases only).
        min_gain: How much an option must raise the mean Dice over ``none`` to be chosen (0 <= min_gain < 1).
        overwrite: Replace an existing ``postprocessing.json``.
        progress: A progress bar on stderr.

    Returns:
        The :class:`Selection`; ``run_dir/postprocessing.json`` holds per class ``option``, ``min_size``,
        ``dice_before``, ``dice_after``, ``n_cases`` and the Dice of every candidate.

    Raises:
        ConfigError: ``min_gain`` out of range.
        DataError: Not a run folder, no validation predictions, folds unfinished, unreadable or mismatched files.
        OutputExistsError: ``postprocessing.json`` exists and ``overwrite`` is False.
    """
    return select_postprocessing_runs([run_dir], min_gain=min_gain, overwrite=overwrite, progress=progress)[0]


def select_postprocessing_runs(run_dirs: Sequence[str | Path], *, min_gain: float = MIN_GAIN,
                               overwrite: bool = False, progress: bool = True) -> list[Selection]:
    """:func:`select_postprocessing` for several run folders, all or nothing (``medseg postprocess-select``).

    Every folder is read and its ``postprocessing.json`` checked, then every folder scored, and only then is any
    file written: a refusal or a bad file in one folder leaves all of them as they were.

    Raises:
        ConfigError: ``min_gain`` out of range, no folder, or a folder given twice.
        DataError: As :func:`select_postprocessing`, for any folder.
        OutputExistsError: Any folder's ``postprocessing.json`` exists and ``overwrite`` is False.
    """
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise ConfigError(f"--min-gain: got {min_gain!r}; allowed a number 0 <= x < 1 (mean Dice)")
    folders = [Path(d) for d in run_dirs]
    if not folders:
        raise ConfigError("no run folder given; give one or more cross-validation folders")
    seen: dict[Path, Path] = {}
    for folder in folders:
        key = folder.resolve()
        if key in seen:
            raise ConfigError(f"{folder}: run folder given twice (as {seen[key]} too); give each once")
        seen[key] = folder
    runs = []
    for folder in folders:
        cases = _cases(folder)
        out = folder / POSTPROCESSING_FILE
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise OutputExistsError(f"{out}: exists; pass --overwrite to replace it")
        runs.append((folder, out, cases))
    scored = [(folder, out, cases, _choices(cases, min_gain, progress)) for folder, out, cases in runs]
    selections = []
    for folder, out, cases, choices in scored:
        write_json_atomic(out, {
            "format": POSTPROCESSING_FORMAT, "version": 1, "n_cases": len(cases.pairs), "min_gain": min_gain,
            "connectivity": "faces", "classes": {ch.name: _entry(ch, cases.labels) for ch in choices},
        })
        selections.append(Selection(folder, out, choices))
    return selections


def _choices(cases: _Cases, min_gain: float, progress: bool) -> list[ClassChoice]:
    """Score every case of one run folder and decide each foreground class."""
    foreground = range(1, cases.labels.num_classes)
    stats: dict[int, list[_Components]] = {c: [] for c in foreground}
    with progress_bar(f"scoring {len(cases.pairs)} cases", len(cases.pairs), enabled=progress) as advance:
        for name, pred_path, truth_path in cases.pairs:
            pred = _classes(pred_path, cases)
            truth = _classes(truth_path, cases)
            if pred.shape != truth.shape:
                raise DataError(f"{pred_path}: shape {pred.shape} differs from the mask {truth_path} {truth.shape}")
            for c in foreground:
                stats[c].append(_components(pred == c, truth == c))
            advance()
            log.debug("scored %s", name)
    return [_choose(cases.labels.names[c], c, stats[c], min_gain) for c in foreground]


def _classes(path: Path, cases: _Cases) -> np.ndarray:
    values, _ = read_label_values(path)
    classes, _ = cases.labels.to_class(values, tolerance=cases.tolerance, source=str(path))
    return np.asarray(classes)


def _choose(name: str, index: int, stats: list[_Components], min_gain: float) -> ClassChoice:
    rules = [ComponentRule("none"), ComponentRule("largest_component")]
    rules += [ComponentRule("remove_small", n) for n in candidate_sizes([s.sizes for s in stats])]
    dice = {rule: float(np.mean([s.dice(s.keep(rule)) for s in stats])) for rule in rules}
    rule = choose_rule(dice, min_gain)
    return ClassChoice(name, index, rule, dice[ComponentRule("none")], dice[rule], len(stats),
                       {r.describe(): d for r, d in dice.items()})


def _entry(choice: ClassChoice, labels: LabelMap) -> dict[str, Any]:
    return {"index": choice.index, "value": labels.output_values[choice.index], "option": choice.rule.option,
            "min_size": choice.rule.min_size if choice.rule.option == "remove_small" else None,
            "dice_before": choice.dice_before, "dice_after": choice.dice_after, "n_cases": choice.n_cases,
            "candidates": choice.candidates}
