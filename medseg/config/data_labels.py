"""The ``data.labels`` section: which source gray values make up each output class."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medseg.config.strict import Strict

__all__ = ["LabelClassConfig", "LabelsConfig"]


class LabelClassConfig(Strict):
    """One output class and the source gray values that belong to it."""

    name: str = Field(min_length=1, description="Class name, e.g. 'polyp' or 'L1'.")
    values: list[int] = Field(
        min_length=1,
        description="Source gray values of this class; the first one is written back on output.",
    )


class LabelsConfig(Strict):
    """Gray-value label mapping: mask values -> classes 0..N-1 and back."""

    classes: list[LabelClassConfig] | None = Field(
        None,
        description="Ordered classes (background first). Also accepts a mapping {gray_value: name}. "
        "Left empty, the values are discovered from the training masks.",
    )
    tolerance: int = Field(
        0,
        ge=0,
        le=127,
        description="Mask values within this many gray levels of a class value snap to it (JPEG masks).",
    )
    unlisted: Literal["error", "background"] = Field(
        "error",
        description="Mask values in no class (beyond the tolerance): an error naming the file, or background "
        "(e.g. organs in a full TotalSegmentator label map when training vertebrae).",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _mapping_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if any(isinstance(x, bool) or not isinstance(x, (int, str)) for x in value):
                raise ValueError(f"gray values must be integers, got {sorted(map(repr, value))}")
            if any(not isinstance(x, (str, int)) or isinstance(x, bool) for x in value.values()):
                raise ValueError(f"class names must be text, got {list(value.values())}")
            return [{"name": str(name), "values": [key]} for key, name in value.items()]
        return value

    @model_validator(mode="after")
    def _unique(self) -> LabelsConfig:
        if self.classes is None:
            return self
        if len(self.classes) < 2:
            raise ValueError(f"needs at least 2 classes (background + one), got {len(self.classes)}")
        seen: dict[int, str] = {}
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        for c in self.classes:
            for v in c.values:
                if v in seen:
                    raise ValueError(f"gray value {v} is listed for both {seen[v]!r} and {c.name!r}")
                seen[v] = c.name
        return self

