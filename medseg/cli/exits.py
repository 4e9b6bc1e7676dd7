"""Where the command line ends: exceptions become one stderr line and an exit code.

Exit codes: 0 ok, 2 usage or config error (an output that exists without ``--overwrite`` too), 1 data or
runtime error. A :class:`MedsegError` prints one line on stderr, never a traceback; anything else is a bug and
keeps its traceback. :class:`OneLineUsageErrors` handles click's usage errors, :func:`user_errors` medseg's own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from medseg.errors import ConfigError, MedsegError, OutputExistsError

__all__ = ["OneLineUsageErrors", "echo", "user_errors"]


class OneLineUsageErrors(TyperGroup):
    """The root command group: a usage error (unknown option, ``--overlap abc``, a missing argument) is one
    stderr line, ``error: medseg predict: Invalid value for '--overlap': ... (see medseg predict --help)``, exit 2,
    instead of click's usage box. Everything else ends as with click's standalone mode.

    Typer 0.2x vendors click, older releases use click itself: the errors are recognised by their class names
    (``UsageError``, ``ClickException``, ``Abort``), which both share.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as err:
            kinds = {c.__name__ for c in type(err).__mro__}
            if "NoArgsIsHelpError" in kinds:  # `medseg` or `medseg config` alone: the help, as before
                err.show()  # type: ignore[attr-defined]
                sys.exit(2)
            if "UsageError" in kinds:
                ctx = getattr(err, "ctx", None)
                where = ctx.command_path if ctx is not None else (prog_name or "medseg")
                echo(f"error: {where}: {_one_line(err.format_message())} (see {where} --help)",  # type: ignore[attr-defined]
                     err=True)
                sys.exit(2)
            if "ClickException" in kinds:
                echo(f"error: {_one_line(err.format_message())}", err=True)  # type: ignore[attr-defined]
                sys.exit(int(getattr(err, "exit_code", 1)))
            if "Abort" in kinds:
                echo("error: aborted", err=True)
                sys.exit(1)
            raise
        sys.exit(code if isinstance(code, int) else 0)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn medseg errors into one stderr line and an exit code (2 config or usage, 1 data/runtime).

    An output that exists without ``--overwrite`` is a usage refusal (exit 2), like a rerun with other settings.
    """
    try:
        yield
    except (ConfigError, OutputExistsError) as err:
        _error(f"error: {_one_line(err)}")
        raise typer.Exit(2) from None
    except MedsegError as err:
        _error(f"error: {_one_line(err)}")
        if _lost_peers(err):
            _end_now(1)
        raise typer.Exit(1) from None
    except OSError as err:  # a user path the io layer did not anticipate (permissions, full disk, ...)
        where = f"{err.filename}: " if err.filename else ""
        _error(f"error: {where}{err.strerror or _one_line(err)}")
        raise typer.Exit(1) from None
    except MemoryError:
        _error("error: out of memory; the input is too large for this machine (try a smaller input or "
               "--sw-batch-size 1)")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        from medseg.training.rank_errors import under_launcher

        if not under_launcher():  # under `--nproc N` the launcher got the Ctrl-C too and tells it once
            _error("interrupted")
        raise typer.Exit(130) from None


def _lost_peers(err: MedsegError) -> bool:
    """True for a training process that lost the others (without importing torch where training never ran)."""
    distributed = sys.modules.get("medseg.training.distributed")
    return distributed is not None and isinstance(err, distributed.PeerLostError)


def _end_now(code: int) -> None:
    """End the process at once, its line printed and logs flushed: after another training process died, tearing
    down torch.distributed's state at interpreter exit can block (seen once in the test suite: rank 0 printed its
    line, then did not exit within 60 s). The run folder was left resumable before the line was printed."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _error(line: str) -> None:
    """Print an error line on stderr; a process of ``medseg train --nproc N`` other than rank 0 hands it to the
    launcher instead (:mod:`medseg.training.rank_errors`), so the error all processes meet is printed once."""
    from medseg.training.rank_errors import hand_over

    if hand_over(line):
        echo(line, err=True)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def echo(text: str, *, err: bool = False) -> None:
    """Echo text that may hold non-UTF-8 file names (surrogate escapes) as their original bytes."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    typer.echo(data, err=err)

