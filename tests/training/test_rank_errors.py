"""The processes of ``medseg train --nproc N`` hand their error lines to the launcher: rank 0 prints its own, the
launcher's line carries a first failure that nobody printed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medseg.errors import ConfigError, MedsegError
from medseg.training.launcher import launch_local
from medseg.training.rank_errors import RANK_ERRORS_ENV, first_failure_line, hand_over, recorded_lines


def test_only_rank_0_prints_under_the_launcher_and_every_rank_records(tmp_path, monkeypatch):
    monkeypatch.delenv(RANK_ERRORS_ENV, raising=False)
    monkeypatch.setenv("RANK", "1")
    assert hand_over("error: x") is True  # torchrun without the launcher: each process prints
    monkeypatch.setenv(RANK_ERRORS_ENV, str(tmp_path))
    assert hand_over("error: bad mask") is False
    monkeypatch.setenv("RANK", "0")
    assert hand_over("error: bad mask") is True
    assert recorded_lines(tmp_path) == {0: "error: bad mask", 1: "error: bad mask"}
    monkeypatch.setenv(RANK_ERRORS_ENV, str(tmp_path / "gone"))
    assert hand_over("error: y") is True  # cannot be recorded: printed


@pytest.mark.parametrize(("lines", "rank", "expected"), [
    ({0: "error: a", 1: "error: a"}, 1, None),  # the same line: rank 0 printed it
    ({0: "error: a", 1: "error: b"}, 1, "b"),  # another line: nobody printed it
    ({1: "error: b"}, 1, "b"),  # rank 0 stopped before it met an error
    ({0: "error: a", 1: "error: b"}, 0, None),  # rank 0 failed first and printed its line
    ({0: "error: a"}, 1, None),  # rank 1 left no line (a traceback it printed itself)
])
def test_first_failure_line(lines, rank, expected):
    assert first_failure_line(lines, rank) == expected


@pytest.mark.parametrize(("exitcode", "line", "error", "needle"), [
    (1, "error: /data/masks/c7.png: label values 128 are not within tolerance 20", MedsegError,
     "rank 1 exited with code 1: /data/masks/c7.png: label values 128 are not within tolerance 20; the launcher "
     "stopped the others"),
    (2, None, ConfigError, "rank 1 exited with code 2 (its error is above)"),
])
def test_the_launcher_line_carries_an_error_nobody_printed(monkeypatch, exitcode, line, error, needle):
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def fail(args):
        folder = os.environ[RANK_ERRORS_ENV]  # given to the processes, as torchrun passes the environment on
        for rank, text in ((0, "error: rank 0: lost the other training processes"), (1, line)):
            monkeypatch.setenv("RANK", str(rank))
            if text is not None:
                hand_over(text)
        first = ProcessFailure(local_rank=1, pid=11, exitcode=exitcode, error_file="")
        later = ProcessFailure(local_rank=0, pid=10, exitcode=1, error_file="")
        later.timestamp = first.timestamp + 1
        assert len(list(Path(folder).iterdir())) == (2 if line else 1)
        raise ChildFailedError("medseg", {0: later, 1: first})

    monkeypatch.setattr(torchrun, "run", fail)
    monkeypatch.delenv(RANK_ERRORS_ENV, raising=False)
    with pytest.raises(error, match=re.escape(needle)) as info:
        launch_local(2, ["train", "cfg.yaml"])
    assert type(info.value) is error
    assert RANK_ERRORS_ENV not in os.environ  # the launcher's own environment is as it was


@pytest.mark.parametrize("first", [0, 1])
def test_an_error_rank_0_printed_is_not_told_again_nor_logged_by_torch(monkeypatch, capfd, first):
    """The launcher returns the exit code and names no rank (rank 1 may stop first with rank 0's line); torch's
    W/E lines (a process failed, the others were sent SIGTERM) go to the debug log, not to stderr."""
    import logging

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def fail(args):
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            hand_over("error: config.yaml: data.root: no images found")
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").warning("Sending process 11 closing "
                                                                                  "signal SIGTERM")
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").error("failed (exitcode: 2) local_rank: 0")
        failures = {r: ProcessFailure(local_rank=r, pid=10 + r, exitcode=2, error_file="") for r in (0, 1)}
        failures[1 - first].timestamp = failures[first].timestamp + 1
        raise ChildFailedError("medseg", failures)

    monkeypatch.setattr(torchrun, "run", fail)
    debug: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            debug.append(record.getMessage())

    medseg_log = logging.getLogger("medseg.training.launcher")  # kept apart from handlers earlier tests left
    for name, value in (("handlers", [Keep()]), ("propagate", False), ("level", logging.DEBUG)):
        monkeypatch.setattr(medseg_log, name, value)
    handlers = logging.getLogger("torch.distributed").handlers[:]
    assert launch_local(2, ["train", "cfg.yaml"]) == 2
    assert capfd.readouterr().err == ""
    assert debug == [
        "torch.distributed.elastic.multiprocessing.api: Sending process 11 closing signal SIGTERM",
        "torch.distributed.elastic.multiprocessing.api: failed (exitcode: 2) local_rank: 0"]
    assert logging.getLogger("torch.distributed").handlers == handlers  # torch's own logging as it was
