"""The ``medseg`` command line: thin wrappers over the Python API.

Exit codes: 0 ok, 2 usage or config error (an output that exists without ``--overwrite`` too), 1 data or
runtime error. A :class:`MedsegError` prints one line on stderr, never a traceback; anything else is a bug and
keeps its traceback.

This module builds the Typer app and registers the commands in their order (the order of ``medseg --help``);
the commands live in ``train_commands``, ``predict_commands``, ``data_commands`` and ``check_commands``, the
options they share in ``options``, the exit codes in ``exits``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medseg.cli.check_commands import config_check, config_show, doctor
from medseg.cli.data_commands import demo, inspect, plan, preprocess, synth
from medseg.cli.exits import OneLineUsageErrors
from medseg.cli.predict_commands import evaluate, export, predict
from medseg.cli.train_commands import compare, postprocess_select, train

__all__ = ["app", "main"]

app = typer.Typer(
    cls=OneLineUsageErrors,
    name="medseg",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="medseg: medical-image segmentation on MONAI and PyTorch.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check or show a config file.")
app.add_typer(config_app, name="config")


def _print_version(value: bool) -> None:
    if value:
        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the medseg version and exit.")] = False,
) -> None:
    """medseg: medical-image segmentation on MONAI and PyTorch."""


app.command()(train)
app.command()(predict)
app.command()(export)
app.command()(evaluate)
app.command()(compare)
app.command("postprocess-select")(postprocess_select)
app.command()(demo)
app.command()(synth)
app.command()(plan)
app.command()(preprocess)
app.command()(inspect)
app.command()(doctor)
config_app.command("check")(config_check)
config_app.command("show")(config_show)


def main() -> None:
    """Console-script entry point (also ``python -m medseg``)."""
    from medseg.processes import prefer_huge_pages

    prefer_huge_pages()  # before anything imports torch: PyTorch reads the setting once
    app(prog_name="medseg")


if __name__ == "__main__":
    main()
