"""Inference settings given at prediction time, checked like config values.

``Predictor.from_checkpoint(path, overlap=0.5)`` and ``medseg predict --overlap 0.5`` override what the
checkpoint stored. Each override is checked where it enters: an unknown name, a value out of range, or a
setting that a model of this kind does not use is a :class:`~medseg.errors.ConfigError` of one line naming
the setting, the value and what is allowed, never ignored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from medseg.config.kinds import DataKind
from medseg.config.schema import InferConfig
from medseg.errors import ConfigError

__all__ = ["ALLOWED_VALUES", "IMAGE_MODEL_SETTINGS", "MAX_ROI", "apply_infer_overrides", "parse_roi_size"]

#: Largest window side accepted (voxels).
MAX_ROI = 4096
#: What each inference setting accepts, as said in error messages.
ALLOWED_VALUES: dict[str, str] = {
    "roi_size": f"integers 1..{MAX_ROI}: one size for every axis or one per axis",
    "overlap": "a number with 0 <= overlap < 1",
    "sw_batch_size": "an integer >= 1",
    "blend": "gaussian or constant",
    "precision": "auto, fp32, bf16 or fp16",
    "backend": "auto, eager, channels_last or compile",
    "tta": "true or false",
    "largest_component": "true or false",
    "threshold": "a number with 0 < threshold < 1, for two-class models only",
}
#: The settings a 2D image model uses (it runs the network once over the resized image, no sliding window).
IMAGE_MODEL_SETTINGS = frozenset({"tta", "largest_component", "threshold"})


def parse_roi_size(value: Any, *, name: str = "roi_size") -> tuple[int, ...]:
    """A window size from ``96``, ``[96, 96, 64]``, ``"96"`` or ``"96,96,64"``.

    Raises:
        ConfigError: Not positive integers, naming ``name`` and the value.

    Example:
        >>> parse_roi_size("96,96,64"), parse_roi_size(128)
        ((96, 96, 64), (128,))
    """
    items: list[Any]
    if isinstance(value, str):
        items = [p.strip() for p in value.lower().replace("x", ",").split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, np.ndarray) and value.ndim <= 1:
        items = [v.item() for v in value.reshape(-1)]
    else:
        items = [value]
    sizes: list[int] = []
    for item in items:
        number = _positive_int(item)
        if number is None:
            raise ConfigError(
                f"{name}: got {_shown(value)}; allowed {ALLOWED_VALUES['roi_size']} (e.g. 96 or 96,96,64)")
        sizes.append(number)
    if not sizes:
        raise ConfigError(
            f"{name}: got {_shown(value)}; allowed {ALLOWED_VALUES['roi_size']} (e.g. 96 or 96,96,64)")
    return tuple(sizes)


def _positive_int(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, str):
        item = item.strip().lstrip("0") or "0"
        if not (item.isascii() and item.isdigit()) or len(item) > len(str(MAX_ROI)):
            return None
    try:
        number = int(item)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(item, float) and (not math.isfinite(item) or item != number):
        return None
    if isinstance(item, str):
        return number if 0 < number <= MAX_ROI else None
    return number if 0 < number <= MAX_ROI and number == item else None


def apply_infer_overrides(
    infer: InferConfig,
    overrides: Mapping[str, Any],
    kind: DataKind,
    *,
    spell: Callable[[str], str] = lambda name: name,
) -> InferConfig:
    """``infer`` with ``overrides`` applied (``None`` values mean "not given").

    Args:
        infer: The settings stored in the checkpoint.
        overrides: Setting name -> new value; a ``None`` value means "not given" (the stored value stays),
            but its name must still be a known setting.
        kind: The model's kind: image models use only ``tta`` and ``largest_component``.
        spell: How a setting is named in messages (the CLI passes ``--sw-batch-size`` style names).

    Raises:
        ConfigError: Unknown setting, value out of range, or a setting this kind of model does not use.

    Example:
        >>> apply_infer_overrides(InferConfig(), {"overlap": 0.5, "tta": None}, DataKind.VOLUMES3D).overlap
        0.5
    """
    known = set(InferConfig.model_fields)
    for name, value in overrides.items():
        if name not in known:
            raise ConfigError(
                f"{spell(name)}: got {_shown(value)}; unknown inference setting; allowed: {', '.join(sorted(known))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if not kind.segments_volumes:
        unused = sorted(set(given) - IMAGE_MODEL_SETTINGS)
        if unused:
            uses = ", ".join(spell(n) for n in sorted(IMAGE_MODEL_SETTINGS))
            raise ConfigError(
                f"{spell(unused[0])}: got {_shown(given[unused[0]])}; does not apply to this {kind.value} model "
                f"(it runs once over the resized image, no sliding window); settings it uses: {uses}"
            )
    if "roi_size" in given:
        roi = parse_roi_size(given["roi_size"], name=spell("roi_size"))
        if len(roi) not in (1, kind.spatial_dims):
            raise ConfigError(f"{spell('roi_size')}: got {len(roi)} sizes {list(roi)}; a {kind.value} model needs 1 "
                              f"or {kind.spatial_dims}")
        given["roi_size"] = roi
    for name, value in given.items():
        _check_type(name, value, spell)
        if name in ("tta", "largest_component"):
            given[name] = bool(value)
        elif name in ("overlap", "threshold"):
            given[name] = float(value)
        elif name == "sw_batch_size":
            given[name] = int(value)
    try:
        return InferConfig.model_validate({**infer.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "infer"
        raise ConfigError(
            f"{spell(name)}: got {_shown(overrides.get(name))}; {first['msg'].lower()} "
            f"(allowed: {ALLOWED_VALUES.get(name, '?')})"
        ) from None


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _shown(value: Any) -> str:
    """``repr`` of a value, cut to a readable length for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_type(name: str, value: Any, spell: Callable[[str], str]) -> None:
    """Refuse what pydantic's lax mode would quietly convert (``True`` as an overlap, ``"1"`` as a flag)."""
    wrong = False
    if name in ("tta", "largest_component"):
        wrong = not isinstance(value, (bool, np.bool_))
    elif name in ("overlap", "threshold"):
        wrong = isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value)
    elif name == "sw_batch_size":
        wrong = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    elif name in ("precision", "blend", "backend"):
        wrong = not isinstance(value, str)
    if wrong:
        raise ConfigError(
            f"{spell(name)}: got {_shown(value)} ({type(value).__name__}); allowed {ALLOWED_VALUES[name]}")
