"""``medseg config check``, ``config show`` and ``doctor``: a config and the installation checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.exits import echo, user_errors
from medseg.cli.options import Sets

__all__ = ["config_check", "config_show", "doctor"]


def config_check(config: Annotated[Path, typer.Argument(help="Experiment YAML.")], sets: Sets = None) -> None:
    """Validate a config; exit 2 with every problem listed if it is invalid."""
    with user_errors():
        from medseg.config import load_config

        load_config(config, list(sets or []))
        typer.echo(f"{config}: ok")


def config_show(config: Annotated[Path, typer.Argument(help="Experiment YAML.")], sets: Sets = None) -> None:
    """Print the resolved config (defaults filled in, paths absolute) as YAML."""
    with user_errors():
        from medseg.config import dump_config, load_config

        typer.echo(dump_config(load_config(config, list(sets or []))), nl=False)


def doctor() -> None:
    """Check the installation: versions, CUDA, CPU bf16, DICOM decoders, free disk; exit 1 if a part is missing."""
    with user_errors():
        from medseg.doctor import check_environment

        report = check_environment()
        echo(report.text())
        if not report.ok:
            echo(f"error: missing {'; '.join(report.missing)}", err=True)
            raise typer.Exit(1)

