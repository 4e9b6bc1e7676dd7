"""Markdown reference of every ``medseg`` command, built from the Typer app itself.

``python -m medseg.cli.reference > docs/cli-reference.md`` regenerates the docs page; a test checks it is current.
Option names, help texts, defaults and required flags come from the commands Typer builds
(:func:`typer.main.get_command`), value types from the command functions' annotations, so the page says
what ``medseg COMMAND --help`` says, without the terminal's width or colours.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
import typer.core
import typer.main

from medseg.cli.main import app

__all__ = ["cli_reference_markdown", "command_options", "iter_commands"]

_TYPE_NAMES: dict[object, str] = {Path: "path", str: "text", int: "integer", float: "number", bool: "flag"}
_EXIT_CODES = ("Exit codes: 0 ok, 2 config or usage error (an output that exists without `--overwrite` too), 1 data "
               "or runtime error; errors are one line on stderr.")


def iter_commands(root: typer.Typer = app) -> Iterator[tuple[str, Any]]:
    """Every command of ``root`` as ``("medseg sub command", command)``, groups before their commands.

    Args:
        root: The Typer app (default: medseg's).

    Returns:
        An iterator of ``(full name, Typer command or group)`` pairs, in the app's order.

    Example:
        >>> [name for name, _ in iter_commands()][:3]
        ['medseg', 'medseg train', 'medseg predict']
    """
    yield from _walk(typer.main.get_command(root), "medseg")


def _walk(command: Any, name: str) -> Iterator[tuple[str, Any]]:
    yield name, command
    if isinstance(command, typer.core.TyperGroup):
        for sub in command.commands.values():
            yield from _walk(sub, f"{name} {sub.name}")


def command_options(command: Any) -> list[str]:
    """The option names of one command as ``--help`` shows them (``--overwrite``, ``--no-overwrite``, ``-o``).

    Args:
        command: A command from :func:`iter_commands`.

    Returns:
        Every option string, in the command's order, ``--help`` excluded.

    Example:
        >>> dict(iter_commands())["medseg synth"].params[1].opts
        ['--output', '-o']
        >>> command_options(dict(iter_commands())["medseg synth"])
        ['--output', '-o', '--n', '--seed', '--overwrite', '--no-overwrite']
    """
    names: list[str] = []
    for param in command.params:
        if isinstance(param, typer.core.TyperOption):
            names += [*param.opts, *param.secondary_opts]
    return names


def _hints(callback: Callable[..., Any] | None) -> dict[str, Any]:
    if callback is None:
        return {}
    return typing.get_type_hints(callback, include_extras=True)


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(base type, is a list) of an ``Annotated[Optional[list[X]], ...]`` annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _type_name(param: Any, hints: dict[str, Any]) -> str:
    base, many = _strip(hints.get(param.name, str))
    name = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    if name == "flag" and param.secondary_opts:
        return "flag (on/off)"
    if many:
        return f"{name}, repeatable" if isinstance(param, typer.core.TyperOption) else f"{name}, one or more"
    return name


def _default(param: Any) -> str:
    if param.required:
        return "**required**"
    value = param.default
    if value is None or value == []:
        return "not set"
    if isinstance(value, bool):
        on, off = [*param.opts, *param.secondary_opts, "", ""][:2]
        return f"`{on}`" if value else (f"`{off}`" if param.secondary_opts else "off")
    return f"`{value}`"


def _names(param: Any) -> str:
    if isinstance(param, typer.core.TyperArgument):
        return f"`{param.name.upper()}{'...' if param.nargs == -1 else ''}`"
    names = ", ".join(f"`{o}`" for o in param.opts)
    return names + "".join(f" / `{o}`" for o in param.secondary_opts)


def _usage(name: str, command: Any) -> str:
    if isinstance(command, typer.core.TyperGroup):
        return f"{name} [OPTIONS] COMMAND [ARGS]..."
    args = []
    for param in command.params:
        if isinstance(param, typer.core.TyperArgument):
            text = param.name.upper() + ("..." if param.nargs == -1 else "")
            args.append(text if param.required else f"[{text}]")
    return " ".join([name, "[OPTIONS]", *args])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _command_section(name: str, command: Any) -> list[str]:
    doc = inspect.cleandoc(command.help or "")
    lines = [f"## `{name}`", "", doc, "", "```text", _usage(name, command), "```", ""]
    if isinstance(command, typer.core.TyperGroup):
        lines += ["| command | what it does |", "| --- | --- |"]
        for sub in command.commands.values():
            summary = inspect.cleandoc(sub.help or "").split("\n")[0]
            anchor = f"{name} {sub.name}".replace(" ", "-")
            lines.append(f"| [`{sub.name}`](#{anchor}) | {_cell(summary)} |")
        return [*lines, ""]
    hints = _hints(command.callback)
    lines += ["| argument or option | type | default | meaning |", "| --- | --- | --- | --- |"]
    for param in command.params:
        lines.append(f"| {_names(param)} | {_type_name(param, hints)} | {_default(param)} | "
                     f"{_cell(getattr(param, 'help', None) or '')} |")
    return [*lines, ""]


def cli_reference_markdown() -> str:
    """The whole command-line reference as Markdown: one section per command, one table row per option.

    Returns:
        The text of ``docs/cli-reference.md``.

    Example:
        >>> text = cli_reference_markdown()
        >>> "## `medseg predict`" in text and "| `--overlap` | number | not set |" in text
        True
    """
    lines = ["# CLI reference", "",
             "Generated from the Typer app in `medseg/cli/main.py` by `python -m medseg.cli.reference`; "
             "do not edit by hand. `medseg COMMAND --help` prints the same in a terminal.", "", _EXIT_CODES, ""]
    for name, command in iter_commands():
        lines += _command_section(name, command)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(cli_reference_markdown(), end="")
