"""Markdown reference of every config key, built from the schema's field descriptions.

``python -m medseg.config.reference > docs/config.md`` regenerates the docs page; a test checks it is current.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from medseg.config.schema import ExperimentConfig


def _sections(model: type[BaseModel], prefix: str, title: str = "") -> Iterator[tuple[str, str, type[BaseModel]]]:
    yield prefix, title or f"`{prefix or '(top level)'}`", model
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, key)
        members = _union_members(ann)
        for member in members:  # one section per network of model.name
            tag = member.model_fields["name"].annotation
            yield from _sections(member, key, f"`{key}` (name: {typing.get_args(tag)[0]})")


def _union_members(ann: object) -> list[type[BaseModel]]:
    """The config classes of a union of them (``model``: one per network), else none."""
    args = typing.get_args(ann)
    if len(args) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
        return list(args)
    return []


def _type_name(ann: object) -> str:
    if _union_members(ann):
        return "one of the sections below, by name"
    text = re.sub(r"medseg\.config\.\w+\.", "", str(ann).replace("typing.", "").replace("pathlib.", ""))
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
             ("Generated from the config classes in `medseg/config/` by `python -m medseg.config.reference`; "
             "do not edit by hand."),
             "Unknown keys are errors. Relative paths resolve against the YAML file's folder.", ""]
    for prefix, title, model in _sections(ExperimentConfig, ""):
        lines += [f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], "",
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
