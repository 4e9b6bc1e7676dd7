"""Errors medseg raises for problems a user can fix.

Library code raises these; the CLI turns them into one stderr line and an exit code
(2 for :class:`ConfigError` and :class:`OutputExistsError`, usage refusals; 1 for every other
:class:`MedsegError`).
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class: a problem the user can fix (bad file, bad setting, bad checkpoint)."""


class ConfigError(MedsegError, ValueError):
    """Bad YAML, override, CLI option or config value."""


class DataError(MedsegError, ValueError):
    """Unreadable image or volume, geometry mismatch, unknown label value."""


class CheckpointError(MedsegError):
    """Missing, corrupt, unsafe or incompatible checkpoint."""


class OutputExistsError(MedsegError):
    """An output file or folder exists and ``overwrite`` was not requested (the CLI exits 2, a usage refusal)."""


class DependencyError(MedsegError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""


class ExportError(MedsegError):
    """A model export failed, or the exported network does not compute what the PyTorch network computes."""


def shortened(text: str, limit: int = 80) -> str:
    """The first line of ``text`` (an error message a library gave), cut at a word boundary with ``...`` when longer
    than ``limit``: what medseg's own one-line messages quote of it.

    Example:
        >>> shortened("File is missing DICOM File Meta Information header or the prefix is missing", 40)
        'File is missing DICOM File Meta...'
    """
    line = text.splitlines()[0] if text else ""
    if len(line) <= limit:
        return line
    return line[:limit - 2].rsplit(" ", 1)[0].rstrip(" ,;:.") + "..."
