"""Options several commands share, and the logging level they set."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

__all__ = ["Irregular", "Quiet", "Sets", "Verbose", "set_log_level"]

Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: key.path=value.")]  # noqa: UP045
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
Irregular = Annotated[str, typer.Option(help="Tilted, unevenly spaced or sheared volumes: refuse, or resample onto "
                                             "a regular grid (stated in the sidecar).")]


def set_log_level(verbose: bool, quiet: bool) -> None:
    """Log to stderr: debug lines with ``verbose``, warnings and errors only with ``quiet``, else info."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for chatty in ("highdicom", "pydicom"):  # their INFO lines (one per copied attribute) drown medseg's
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))

