"""Shared helpers of the reliability tests: hypothesis profiles, a guarded CLI runner, the bad-input tally.

Hypothesis profiles: ``ci`` (default, a few dozen examples per property) and ``long`` (``MEDSEG_FUZZ=long``).
Every hostile-input case is recorded; the end of the session prints
``hostile inputs: N tried, N clear errors, 0 hung, 0 crashed`` and writes the counts to
``<pytest basetemp>/hostile_inputs.json``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("long" if os.environ.get("MEDSEG_FUZZ") == "long" else "ci")

#: Extra address space a hostile case may take beyond what the test process already maps.
MEMORY_HEADROOM = 4 * 2**30
#: Seconds before a case counts as hung.
CASE_TIMEOUT = 60


@dataclass
class Outcome:
    """How one bad input ended."""

    case: str
    exit_code: int | None
    stdout: str
    stderr: str
    kind: str  # "clear", "hung", "crashed", "unclear"
    detail: str = ""


_RESULTS: list[Outcome] = []


class _Hung(BaseException):
    pass


@contextmanager
def guarded(timeout: int = CASE_TIMEOUT, headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap this process's address space (current mapping + ``headroom``) and wall time while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    cap = mapped + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)

    def on_alarm(signum: int, frame: object) -> None:
        raise _Hung()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(timeout)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old_handler)


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., Outcome]:
    """``run_cli(case, args, expect=(1,), names=...)``: run the medseg CLI in-process under a time and memory
    cap and classify the ending. ``names``: strings one of which the error line must contain (the file)."""
    from typer.testing import CliRunner

    from medseg.cli.main import app

    runner = CliRunner()

    def run(case: str, args: Sequence[object], *, expect: Sequence[int] = (1,),
            names: Sequence[str] = ()) -> Outcome:
        argv = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]
        try:
            with guarded():
                result = runner.invoke(app, argv)
        except _Hung:
            out = Outcome(case, None, "", "", "hung", f"no answer within {CASE_TIMEOUT} s")
            _RESULTS.append(out)
            return out
        stderr = result.stderr if result.stderr_bytes is not None else ""
        stdout = result.stdout
        exc = result.exception
        if (exc is not None and not isinstance(exc, SystemExit)) or "Traceback" in stdout + stderr:
            kind, detail = "crashed", repr(exc)
        elif "out of memory" in stderr:
            kind, detail = "crashed", "memory blow-up (allocation failed instead of a refusal)"
        elif result.exit_code == 0 and 0 in expect:
            kind, detail = "clear", ""  # handled: the bad parts are reported, the good ones used
        else:
            lines = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "failed:"))]
            named = not names or any(any(n in ln for n in names) for ln in lines)
            ok = result.exit_code in expect and len(lines) >= 1 and named
            ok = ok and all(len(ln) < 2000 for ln in lines)
            kind = "clear" if ok else "unclear"
            detail = "" if ok else f"exit {result.exit_code}, expected {list(expect)}; stderr {stderr[-500:]!r}"
        out = Outcome(case, result.exit_code, stdout, stderr, kind, detail)
        _RESULTS.append(out)
        return out

    return run


@pytest.fixture(scope="session")
def call_guarded() -> Callable[..., Outcome]:
    """``call_guarded(case, fn, names=...)``: call a library function under the same caps; a MedsegError whose
    message is one line naming one of ``names`` is a clear error, anything else a crash."""
    from medseg.errors import MedsegError

    def call(case: str, fn: Callable[[], object], *, names: Sequence[str] = ()) -> Outcome:
        try:
            with guarded():
                fn()
        except _Hung:
            out = Outcome(case, None, "", "", "hung", f"no answer within {CASE_TIMEOUT} s")
        except MedsegError as err:
            message = str(err)
            ok = "\n" not in message and (not names or any(n in message for n in names))
            out = Outcome(case, 1, "", message, "clear" if ok else "unclear", "" if ok else message[:500])
        except Exception as err:  # noqa: BLE001 (classified and reported)
            out = Outcome(case, None, "", repr(err), "crashed", repr(err)[:500])
        else:
            out = Outcome(case, 0, "", "", "unclear", "no error raised")
        _RESULTS.append(out)
        return out

    return call


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    if not _RESULTS:
        return
    counts = {k: sum(r.kind == k for r in _RESULTS) for k in ("clear", "unclear", "hung", "crashed")}
    line = (f"hostile inputs: {len(_RESULTS)} tried, {counts['clear']} clear errors, {counts['unclear']} unclear, "
            f"{counts['hung']} hung, {counts['crashed']} crashed")
    terminalreporter.write_sep("-", line)
    try:
        base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        path = Path(base) / "hostile_inputs.json"
        path.write_text(json.dumps({"tried": len(_RESULTS), **counts,
                                    "cases": [{k: v for k, v in asdict(r).items() if k not in ("stdout",)}
                                              for r in _RESULTS]}, indent=1))
        terminalreporter.write_line(f"hostile input details: {path}")
    except (AttributeError, OSError):
        pass
