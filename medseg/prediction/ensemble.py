"""Ensembles: several trained models predicting as one, their class probabilities averaged.

The members are the folds of one cross-validation run (``RUN/fold_K``, see :mod:`medseg.training.folds`) or
models of different architectures trained on the same labels with the same preprocessing. Each member runs with
its own window size, overlap and flip TTA; the mean of their probabilities is then thresholded or arg-maxed,
post-processed and written as one model's output would be. Members must agree on the kind of data, the labels
(names and values), the input channels and every preprocessing setting but the training patch size
(:func:`check_compatible`).

``medseg predict A.pt B.pt RUN INPUT... -o OUT``: the first argument and the arguments after it that name models
are the members (:func:`split_arguments`), and a folder of fold runs stands for every fold
(:func:`expand_checkpoints`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medseg.checkpoint import checkpoint_in_folder, fold_folders
from medseg.errors import ConfigError
from medseg.prediction.loaded import LoadedModel, postprocessing_of
from medseg.prediction.postprocess import POSTPROCESSING_FILE, ComponentRule, describe_rules, read_postprocessing
from medseg.prediction.predictor import Predictor

__all__ = ["MODEL_SUFFIXES", "Ensemble", "check_compatible", "expand_checkpoints", "is_folds_folder",
           "is_model_path",
           "load_predictor", "split_arguments"]

log = logging.getLogger(__name__)

#: Files that are models: medseg checkpoints and exported ONNX models.
MODEL_SUFFIXES = (".pt", ".pth", ".onnx")

#: Preprocessing entries members may differ in (the sliding window of each uses its own).
MAY_DIFFER = ("patch_size",)

E = TypeVar("E", bound="Ensemble")


def _same(name: str) -> str:
    return name


def is_model_path(path: str | Path) -> bool:
    """Whether ``path`` names a model: a ``.pt``/``.pth``/``.onnx`` file (existing or not, so that a misspelled
    one is reported as a missing checkpoint), a run folder holding its checkpoint, or a folder of fold runs of which
    at least one holds its checkpoint (a data folder with ``fold_K`` sub-folders is none).

    Example:
        >>> is_model_path("runs/spine/checkpoints/best.pt"), is_model_path("scans/ct.nii.gz")
        (True, False)
    """
    path = Path(path)
    if path.is_dir():
        return checkpoint_in_folder(path) is not None or any(checkpoint_in_folder(f) for f in fold_folders(path))
    return path.suffix.lower() in MODEL_SUFFIXES


def is_folds_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of fold runs: no checkpoint of its own, ``fold_K`` folders inside.

    Example:
        >>> is_folds_folder("no/such/folder")
        False
    """
    path = Path(path)
    return path.is_dir() and checkpoint_in_folder(path) is None and bool(fold_folders(path))


def _with_own_postprocessing(model: LoadedModel) -> LoadedModel:
    """``model`` with the ``postprocessing.json`` its checkpoint finds on its own (ONNX models have none)."""
    if model.source.lower().endswith(".onnx"):
        return model
    found, rules = postprocessing_of(model.source, model.labels)
    return dataclasses.replace(model, postprocessing=rules, postprocessing_file=str(found) if rules else None)


def expand_checkpoints(paths: Iterable[str | Path]) -> list[Path]:
    """The models ``paths`` name, in order: a folder of fold runs (``RUN/fold_K``, no checkpoint of its own)
    becomes its folds by fold number; any other path stays as it is.

    Raises:
        ConfigError: No path given.
    """
    out: list[Path] = []
    for path in map(Path, paths):
        folds = fold_folders(path) if path.is_dir() and checkpoint_in_folder(path) is None else []
        out += folds or [path]
    if not out:
        raise ConfigError("checkpoints: none given; allowed: .pt checkpoints, run folders, folders of fold runs "
                          "or exported .onnx models")
    return out


def split_arguments(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """``medseg predict``'s rule: (models, inputs) of its positional arguments.

    The first argument is a model, whatever it is (so a wrong one is reported as a checkpoint); the arguments
    after it that name models too (:func:`is_model_path`) join it, and the first one that does not starts the
    inputs.

    Example:
        >>> split_arguments(["a.pt", "b.onnx", "ct.nii.gz", "c.pt"])
        ([PosixPath('a.pt'), PosixPath('b.onnx')], [PosixPath('ct.nii.gz'), PosixPath('c.pt')])

    Raises:
        ConfigError: No input after the models.
    """
    args = [Path(p) for p in paths]
    count = next((i for i, p in enumerate(args) if i > 0 and not is_model_path(p)), len(args))
    if count == len(args):
        raise ConfigError(f"INPUTS: none after the model{'s' if count > 1 else ''} "
                          f"{', '.join(map(str, args)) or '(none)'}; give images, volumes or folders of them after "
                          "the models")
    return args[:count], args[count:]


def check_compatible(a: LoadedModel, b: LoadedModel, spell: Callable[[str], str] = _same) -> None:
    """Refuse two models that cannot be averaged, naming both and the first setting they differ in.

    They must agree on the kind of data, the device, the input channels, the labels (names and values, in order),
    every preprocessing entry but the patch size, and the settings applied to the average: ``infer.threshold``
    and ``infer.largest_component`` (the rules of ``postprocessing.json`` files are chosen for the ensemble as
    a whole: see :meth:`Ensemble.from_checkpoints`).

    Raises:
        ConfigError: One line: ``ensemble: A and B differ in KEY (VALUE vs VALUE); ...``.
    """
    what = _difference(a, b)
    if what is not None:
        raise ConfigError(f"ensemble: {a.source} and {b.source} differ in {what}; members must share labels, "
                          "preprocessing and input channels (architectures and window sizes may differ)")
    for name in ("threshold", "largest_component"):
        va, vb = getattr(a.infer, name), getattr(b.infer, name)
        if va != vb:
            raise ConfigError(f"ensemble: {a.source} and {b.source} differ in infer.{name} ({va!r} vs {vb!r}), "
                              f"which applies to their average; give {spell(name)} to choose it")


def _agreed_postprocessing(members: Sequence[LoadedModel], spell: Callable[[str], str]
                           ) -> tuple[str | None, dict[int, ComponentRule] | None]:
    """The members' own ``postprocessing.json`` rules (and file) when they all agree; else one error line."""
    first = members[0]
    for other in members[1:]:
        if (first.postprocessing or None) != (other.postprocessing or None):
            raise ConfigError(
                f"ensemble: {first.source} and {other.source} have different postprocessing.json rules "
                f"({_where(first)}{describe_rules(first.postprocessing, first.labels)} vs {_where(other)}"
                f"{describe_rules(other.postprocessing, other.labels)}), which would apply to their average; give "
                f"{spell('largest_component')} or {spell('all_components')} to choose")
    files = list(dict.fromkeys(m.postprocessing_file for m in members if m.postprocessing_file))
    return (", ".join(files) or None) if first.postprocessing else None, first.postprocessing or None


def _where(model: LoadedModel) -> str:
    return f"{model.postprocessing_file}: " if model.postprocessing_file else ""


def _difference(a: LoadedModel, b: LoadedModel) -> str | None:
    if a.kind != b.kind:
        return f"data kind ({a.kind.value} vs {b.kind.value})"
    if a.device != b.device:
        return f"device ({a.device} vs {b.device})"
    if a.in_channels != b.in_channels:
        return f"in_channels ({a.in_channels} vs {b.in_channels})"
    la = [(c.name, list(c.values)) for c in a.labels.classes]
    lb = [(c.name, list(c.values)) for c in b.labels.classes]
    if len(la) != len(lb):
        return f"labels ({len(la)} classes {[n for n, _ in la]} vs {len(lb)} classes {[n for n, _ in lb]})"
    for i, (ca, cb) in enumerate(zip(la, lb, strict=True)):
        if ca != cb:
            return f"labels (class {i}: {ca[0]!r} values {ca[1]} vs {cb[0]!r} values {cb[1]})"
    for key in sorted((set(a.preprocessing) | set(b.preprocessing)) - set(MAY_DIFFER)):
        va, vb = a.preprocessing.get(key, "not set"), b.preprocessing.get(key, "not set")
        if va != vb:
            return f"preprocessing.{key} ({va!r} vs {vb!r})"
    return None


@dataclass
class Ensemble(Predictor):
    """Several models predicting as one: :meth:`predict` (and ``medseg predict``) averages their class
    probabilities, then thresholds or takes the most probable class, as one model's prediction does.

    Build it with :meth:`from_checkpoints` (or :meth:`of` over loaded models). The fields of
    :class:`~medseg.prediction.loaded.LoadedModel` are the first member's: labels, preprocessing, kind and
    input channels are shared by all (see :func:`check_compatible`), and ``infer.threshold`` and
    ``infer.largest_component`` apply to the average; ``source`` names every member.

    Attributes:
        members: The models averaged, each with its own network and inference settings (window size, overlap,
            TTA, precision).

    Example:
        >>> ens = Ensemble.from_checkpoints(["runs/polyp/fold_0", "runs/polyp/fold_1"])  # doctest: +SKIP
        >>> ens = Ensemble.from_checkpoints(["runs/polyp"])  # every runs/polyp/fold_K  # doctest: +SKIP
        >>> probs = ens.predict("image.png", output="probabilities")  # the mean of the folds'  # doctest: +SKIP
    """

    members: tuple[LoadedModel, ...] = ()

    def __post_init__(self) -> None:
        if not self.members:
            raise ConfigError("Ensemble: no members; build it with Ensemble.from_checkpoints or Ensemble.of")

    @classmethod
    def of(cls: type[E], members: Iterable[LoadedModel], *, spell: Callable[[str], str] = _same,
           postprocessing: tuple[str | None, dict[int, ComponentRule] | None] | None = None) -> E:
        """An ensemble of loaded models (an ensemble among them adds its members).

        Args:
            members: The models (or ensembles) to average.
            spell: How a setting is named in error messages.
            postprocessing: (file, rules) applied to the average; default: the members' own
                ``postprocessing`` when they all agree.

        Raises:
            ConfigError: No member, two that cannot be averaged (:func:`check_compatible`), or (without
                ``postprocessing``) members with different postprocessing rules.
        """
        flat = tuple(m for model in members for m in model.members)
        if not flat:
            raise ConfigError("ensemble: no members; give at least one model")
        first = flat[0]
        for other in flat[1:]:
            check_compatible(first, other, spell)
        seen: set[str] = set()
        for source in (m.source for m in flat):
            if source and source in seen:
                log.warning("ensemble: %s given twice; it counts twice in the average", source)
            seen.add(source)
        sources = ", ".join(m.source or "<model>" for m in flat)
        file, rules = postprocessing if postprocessing is not None else _agreed_postprocessing(flat, spell)
        return cls(first.model, first.config, first.labels, dict(first.preprocessing), first.infer, first.device,
                   first.kind, source=f"ensemble of {len(flat)} ({sources})" if len(flat) > 1 else first.source,
                   in_channels=first.in_channels, divisor=first.divisor, tiling=first.tiling,
                   postprocessing=rules, postprocessing_file=file, members=flat)

    @classmethod
    def from_checkpoints(cls: type[E], paths: Iterable[str | Path], *, device: str = "auto",
                         spell: Callable[[str], str] | None = None, postprocessing: bool = True,
                         **infer_overrides: Any) -> E:
        """Load every model ``paths`` name and check that they can be averaged.

        Args:
            paths: ``.pt`` checkpoints, run folders, folders of fold runs (``RUN`` with ``RUN/fold_K``: every
                fold) and exported ``.onnx`` models, in any mix.
            device: ``auto``, ``cpu`` or ``cuda`` (all members on it).
            spell: How a setting is named in error messages (the CLI passes its option names).
            postprocessing: Apply a ``postprocessing.json`` (chosen as below); False: none.
            **infer_overrides: Inference settings applied to every member (see
                :meth:`~medseg.prediction.loaded.LoadedModel.from_checkpoint`); the others stay each member's own.

        Postprocessing applied to the average (members are loaded without their own): ``largest_component``
        given explicitly (True or False) alone decides; else, when ``paths`` is one folder of fold runs, that
        folder's ``postprocessing.json`` (the decision ``medseg postprocess-select`` made from the whole
        cross-validation), if there is one; else the files the members find on their own, when they all agree.

        Raises:
            CheckpointError: A path that is no model (as for one checkpoint).
            ConfigError: No path, a bad override, members that cannot be averaged (:func:`check_compatible`), or
                members whose own ``postprocessing.json`` rules differ (with neither of the above to decide).
            DataError: A ``postprocessing.json`` that is unreadable or names other classes.
        """
        given = [Path(p) for p in paths]
        members = [LoadedModel.from_checkpoint(p, device=device, spell=spell, postprocessing=False, **infer_overrides)
                   for p in expand_checkpoints(given)]
        say = spell or _same
        explicit = infer_overrides.get("largest_component")
        choice: tuple[str | None, dict[int, ComponentRule] | None] = (None, None)
        if not postprocessing:
            pass
        elif explicit is not None:
            log.info("postprocessing: %s given explicitly, so no postprocessing.json is applied",
                     say("largest_component" if explicit else "all_components"))
        elif len(given) == 1 and is_folds_folder(given[0]):
            found = given[0] / POSTPROCESSING_FILE
            if found.is_file():
                choice = (str(found), read_postprocessing(found, members[0].labels))
        else:
            own = [_with_own_postprocessing(m) for m in members]
            choice = _agreed_postprocessing(own, say)
        if choice[1]:
            log.info("postprocessing from %s: %s", choice[0], describe_rules(choice[1], members[0].labels))
        return cls.of(members, spell=say, postprocessing=choice)

    @classmethod
    def from_checkpoint(cls: type[E], path: str | Path, *, device: str = "auto",
                        spell: Callable[[str], str] | None = None, **infer_overrides: Any) -> E:
        """:meth:`from_checkpoints` of one path (a folder of fold runs gives every fold)."""
        return cls.from_checkpoints([path], device=device, spell=spell, **infer_overrides)

    @classmethod
    def from_onnx(cls: type[E], path: str | Path, *, device: str = "auto",
                  spell: Callable[[str], str] | None = None, **infer_overrides: Any) -> E:
        """:meth:`from_checkpoints` of one exported ``.onnx`` model."""
        return cls.from_checkpoints([path], device=device, spell=spell, **infer_overrides)


def load_predictor(paths: Sequence[str | Path], *, device: str = "auto", spell: Callable[[str], str] | None = None,
                   **infer_overrides: Any) -> Predictor:
    """A :class:`~medseg.prediction.predictor.Predictor` for one model, an :class:`Ensemble` for several (a
    folder of fold runs counts as its folds).

    Raises:
        CheckpointError, ConfigError: As :meth:`Ensemble.from_checkpoints`.
    """
    files = expand_checkpoints(paths)
    if len(files) == 1:
        return Predictor.from_checkpoint(files[0], device=device, spell=spell, **infer_overrides)
    return Ensemble.from_checkpoints(paths, device=device, spell=spell, **infer_overrides)
