"""Markdown reference of every config key, built from the schema's field descriptions.

``python -m medseg.config.reference > docs/config.md`` regenerates the docs page; a test checks it is current.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from medseg.config.schema import ExperimentConfig


def _sections(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, type[BaseModel]]]:
    yield prefix, model
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}.{name}" if prefix else name)


def _type_name(ann: object) -> str:
    text = str(ann).replace("typing.", "").replace("pathlib.", "").replace("medseg.config.schema.", "")
    text = text.replace("<class '", "").replace("'>", "")
    positive_float = "Annotated[float, FieldInfo(annotation=NoneType, required=True, metadata=[Gt(gt=0)])]"
    text = text.replace(positive_float, "float>0")
    return text.replace("Annotated[int, FieldInfo(annotation=NoneType, required=True, metadata=[Ge(ge=1)])]", "int>=1")


def _default(field: typing.Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
        if isinstance(value, tuple):
            value = list(value)
        return f"`{value!r}`" if value is not None else "`null`"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "**required**"


def config_reference_markdown() -> str:
    """The whole reference as Markdown, one table per section."""
    lines = ["# Config reference", "",
             "Generated from `medseg/config/schema.py` by `python -m medseg.config.reference`; do not edit by hand.",
             "Unknown keys are errors. Relative paths resolve against the YAML file's folder.", ""]
    for prefix, model in _sections(ExperimentConfig, ""):
        lines += [f"## `{prefix or '(top level)'}`", "", (model.__doc__ or "").strip().splitlines()[0], "",
                  "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            desc = (field.description or "").replace("|", "\\|")
            kind = _type_name(field.annotation).replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {_default(field)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference_markdown(), end="")
