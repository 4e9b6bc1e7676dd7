"""Label-map postprocessing: connected components kept or removed, for every class or class by class.

Components are face-connected (4-neighbours in 2D, 6 in 3D: scipy's default structure). Removed voxels become
background (0). Each rule touches only its own class's voxels, so per-class rules do not depend on each other.

``medseg postprocess-select`` (``training/postprocess_select.py``) writes ``RUN/postprocessing.json``: per class,
the rule that improved the cross-validation Dice. :func:`find_postprocessing` finds it for a checkpoint (in the
run folder, or in the folds' parent folder of a ``fold_K`` run) and :func:`read_postprocessing` reads it back
against the checkpoint's classes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.labels import LabelMap
from medseg.errors import DataError

__all__ = [
    "OPTIONS", "POSTPROCESSING_FILE", "POSTPROCESSING_FORMAT", "ComponentRule", "apply_postprocessing",
    "describe_rules", "find_postprocessing", "keep_largest_component", "read_postprocessing",
    "remove_small_components",
]

#: The file ``medseg postprocess-select`` writes into a run folder.
POSTPROCESSING_FILE = "postprocessing.json"
#: Format tag of that file.
POSTPROCESSING_FORMAT = "medseg-postprocessing"
#: The options, simplest first.
OPTIONS = ("none", "largest_component", "remove_small")


@dataclass(frozen=True)
class ComponentRule:
    """What happens to one class's connected components.

    Attributes:
        option: ``none`` (keep all), ``largest_component`` (keep the largest), or ``remove_small`` (remove those
            under ``min_size`` voxels).
        min_size: For ``remove_small``: components with fewer voxels (pixels in 2D) are removed.

    Example:
        >>> ComponentRule("remove_small", 20)
        ComponentRule(option='remove_small', min_size=20)
        >>> ComponentRule("remove_small", 0)
        Traceback (most recent call last):
        ...
        ValueError: remove_small needs min_size >= 1, got 0
    """

    option: str
    min_size: int = 0

    def __post_init__(self) -> None:
        if self.option not in OPTIONS:
            raise ValueError(f"option: got {self.option!r}; allowed {', '.join(OPTIONS)}")
        if self.option == "remove_small" and self.min_size < 1:
            raise ValueError(f"remove_small needs min_size >= 1, got {self.min_size}")

    def describe(self) -> str:
        """``none``, ``largest_component`` or ``remove_small<N``.

        Example:
            >>> ComponentRule("remove_small", 12).describe(), ComponentRule("none").describe()
            ('remove_small<12', 'none')
        """
        return f"remove_small<{self.min_size}" if self.option == "remove_small" else self.option

    def text(self) -> str:
        """The rule as users read it: ``none``, ``largest_component`` or ``remove_small < N``.

        Example:
            >>> ComponentRule("remove_small", 20).text(), ComponentRule("largest_component").text()
            ('remove_small < 20', 'largest_component')
        """
        return f"remove_small < {self.min_size}" if self.option == "remove_small" else self.option


def describe_rules(rules: Mapping[int, ComponentRule] | None, labels: LabelMap) -> str:
    """Per-class rules as users read them, by class name in class order; ``none`` when there are none.

    Args:
        rules: Class index -> rule (as :func:`read_postprocessing` returns), or None.
        labels: The model's classes (for the names).

    Returns:
        E.g. ``body: largest_component, disc: remove_small < 20``.

    Example:
        >>> labels = LabelMap.from_mapping({0: "background", 1: "body", 2: "disc"})
        >>> describe_rules({2: ComponentRule("remove_small", 20), 1: ComponentRule("largest_component")}, labels)
        'body: largest_component, disc: remove_small < 20'
        >>> describe_rules(None, labels)
        'none'
    """
    if not rules:
        return "none"
    return ", ".join(f"{labels.names[k]}: {r.text()}" for k, r in sorted(rules.items()))


def keep_largest_component(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest connected component of each foreground class; the rest becomes 0.

    Example:
        >>> keep_largest_component(np.array([1, 1, 0, 1, 2]), 3).tolist()
        [1, 1, 0, 0, 2]
    """
    out = classes.copy()
    for c in range(1, num_classes):
        _keep_largest(out, classes, c)
    return out


def remove_small_components(classes: np.ndarray, label: int, min_size: int) -> np.ndarray:
    """Remove the connected components of class ``label`` with fewer than ``min_size`` voxels (they become 0).

    Example:
        >>> remove_small_components(np.array([1, 1, 0, 1, 0, 2]), 1, 2).tolist()
        [1, 1, 0, 0, 0, 2]
    """
    out = classes.copy()
    _remove_small(out, classes, label, min_size)
    return out


def apply_postprocessing(classes: np.ndarray, decisions: Mapping[int, ComponentRule]) -> np.ndarray:
    """Apply each class's rule to a class-index map; classes without a rule are left as they are.

    Args:
        classes: Class indices (any shape); 0 is background.
        decisions: Class index -> :class:`ComponentRule`.

    Returns:
        A new array; removed components are 0.

    Example:
        >>> classes = np.array([1, 1, 0, 1, 0, 2, 0, 2, 2])
        >>> apply_postprocessing(classes, {1: ComponentRule("largest_component"), 2: ComponentRule("none")}).tolist()
        [1, 1, 0, 0, 0, 2, 0, 2, 2]
        >>> apply_postprocessing(classes, {2: ComponentRule("remove_small", 2)}).tolist()
        [1, 1, 0, 1, 0, 0, 0, 2, 2]
    """
    out = classes.copy()
    for label, rule in decisions.items():
        if rule.option == "largest_component":
            _keep_largest(out, classes, label)
        elif rule.option == "remove_small":
            _remove_small(out, classes, label, rule.min_size)
    return out


def _keep_largest(out: np.ndarray, classes: np.ndarray, label: int) -> None:
    mask = classes == label
    if not mask.any():
        return
    components, n = ndimage.label(mask)
    if n <= 1:
        return
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[mask & (components != sizes.argmax())] = 0


def _remove_small(out: np.ndarray, classes: np.ndarray, label: int, min_size: int) -> None:
    mask = classes == label
    if not mask.any():
        return
    components, _ = ndimage.label(mask)
    small = np.bincount(components.ravel()) < min_size
    small[0] = False
    out[small[components]] = 0


def find_postprocessing(checkpoint: str | Path) -> Path | None:
    """The ``postprocessing.json`` that belongs to a checkpoint, or None.

    Looked for in the run folder (the folder given, or the run a ``.pt`` file lies in: ``RUN/checkpoints/x.pt``
    or ``RUN/x.pt``), then, for a fold's run (``fold_K``), in the folds' parent folder.
    """
    path = Path(checkpoint)
    if path.is_dir():
        run = path
    else:
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    candidates = [run / POSTPROCESSING_FILE]
    if re.fullmatch(r"fold_\d+", run.name):
        candidates.append(run.parent / POSTPROCESSING_FILE)
    return next((c for c in candidates if c.is_file()), None)


def read_postprocessing(path: str | Path, labels: LabelMap) -> dict[int, ComponentRule]:
    """Read ``postprocessing.json`` for a model with these classes.

    Args:
        path: The file (written by ``medseg postprocess-select``).
        labels: The model's classes; the file must name the same ones at the same indices.

    Returns:
        Class index -> rule, for the foreground classes the file lists.

    Raises:
        DataError: Not valid JSON, not this format, or classes that do not match the model's.
    """
    path = Path(path)
    try:
        doc: Any = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable postprocessing file: {' '.join(str(err).split())[:160]}") from None
    if not isinstance(doc, dict) or doc.get("format") != POSTPROCESSING_FORMAT or not isinstance(
            doc.get("classes"), dict):
        raise DataError(f"{path}: not a medseg postprocessing file (no format {POSTPROCESSING_FORMAT!r} with "
                        "'classes'); write it with medseg postprocess-select")
    rules: dict[int, ComponentRule] = {}
    for name, entry in doc["classes"].items():
        if name not in labels.names[1:]:
            raise DataError(f"{path}: {name!r} is not a class of the checkpoint (classes: "
                            f"{', '.join(labels.names[1:])}); select again with medseg postprocess-select "
                            "or predict with --all-components")
        if not isinstance(entry, dict):
            raise DataError(f"{path}: class {name!r}: expected a mapping with 'index' and 'option', "
                            f"found {type(entry).__name__}")
        missing = [key for key in ("index", "option") if key not in entry]
        if missing:
            raise DataError(f"{path}: class {name!r}: missing key {missing[0]!r} (an entry has 'index', 'option' "
                            "and, for remove_small, 'min_size')")
        try:
            index = int(entry["index"])
            rule = ComponentRule(str(entry["option"]), int(entry.get("min_size") or 0))
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: class {name!r}: malformed entry ({' '.join(str(err).split())[:120]})") from None
        if labels.names[index:index + 1] != [name] or index < 1:
            raise DataError(f"{path}: class {name!r} is at index {index} in the file but at index "
                            f"{labels.names.index(name)} in the checkpoint; select again with "
                            "medseg postprocess-select or predict with --all-components")
        rules[index] = rule
    return rules
