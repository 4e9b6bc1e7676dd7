"""Griffe extension for the API pages: medseg's docstrings as mkdocstrings' Google parser expects them.

Two habits of the docstrings (STYLE.md, section 8) are rewritten before parsing; the code is untouched:

- the doctests sit under ``Example:``; griffe knows only ``Examples:`` and would render the singular as a
  plain admonition, its ``>>>`` lines as Markdown text (their brackets read as links);
- cross-references are Sphinx roles (``:class:`~medseg.io.volume.Volume```), which Markdown shows
  literally; they become code spans (```Volume```).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)(\(\))?`")


def _code_span(match: re.Match[str]) -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"`{name}{match[3] or ''}`"


class MedsegDocstrings(griffe.Extension):
    """Rename ``Example:`` headings to ``Examples:`` and turn Sphinx roles into code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_code_span, text)
