"""The base of every config section: unknown keys refused, values frozen, floats finite, no boolean for a number."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = ["PositiveFloat", "PositiveInt", "Strict", "StrictUnionMember", "takes_bool"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


def takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits ``True``/``False`` (bool, StrictBool, or a Literal of them).

    Example:
        >>> takes_bool(bool), takes_bool(int | None), takes_bool(Literal[2, 3])
        (True, False, False)
    """
    if annotation is bool:
        return True
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return any(takes_bool(a) for a in typing.get_args(annotation) if not isinstance(a, (int, float, str)))


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable, floats are finite
    (NaN and infinity are refused) and a boolean is never taken for a number (``max_epochs: true`` would be 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or takes_bool(field.annotation):
            return value
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items):
            raise ValueError("a boolean is not allowed here; give a number")
        return value


class StrictUnionMember(BaseModel):
    """:class:`Strict` for the members of a discriminated union (the network configs): pydantic allows no field
    validator on the discriminator, so the boolean check runs over the whole mapping and names the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            field = cls.model_fields.get(str(key))
            if field is None or takes_bool(field.annotation):
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, bool) for v in items):
                raise ValueError(f"{key}: a boolean is not allowed here; give a number (found: {value!r})")
        return data
