"""Every tutorial runs as written: its code blocks, in order, in a fresh folder, on data medseg makes itself.

Per page (docs/tutorials/*.md), in one temporary folder:

- a block with a ``title="NAME"`` (```` ```yaml title="polyps.yaml" ````) is written to the file NAME;
- a ``bash`` block runs in ``bash`` with ``set -euo pipefail``; ``medseg`` and ``python`` on its PATH are this
  interpreter, so the blocks run the code under test. Each ``medseg`` command is a process of its own, with the
  block's arguments, folder, environment, stdin/stdout/stderr and exit status, forked from a server that imported
  torch, MONAI and medseg once per page (see :data:`FORK_SERVER`): a fresh interpreter would spend seconds on
  those imports for every command;
- a ``python`` block runs in this process, in one namespace per page (so a page's later blocks see the names
  its earlier ones defined), with the page's folder as working folder;
- a block whose first line is ``# GPU only`` runs only where CUDA is available, and is skipped elsewhere;
- other blocks (``text``, ``console``, output shown to the reader) are not run.

Then the files each tutorial says it creates must exist and hold what it says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "docs" / "tutorials"
GPU_ONLY = "# GPU only"

# an opening fence (any indent, e.g. inside an admonition), its info string, the body, the closing fence
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_TITLE = re.compile(r'title="([^"]+)"')


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    lang: str
    title: str | None
    code: str
    line: int

    @property
    def gpu_only(self) -> bool:
        return self.code.lstrip().startswith(GPU_ONLY)


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, dedented."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        info = match["info"].strip()
        lang = info.split()[0] if info else ""
        title = _TITLE.search(info)
        body = textwrap.dedent(match["body"])
        blocks.append(Block(lang, title[1] if title else None, body, text.count("\n", 0, match.start()) + 1))
    return blocks


#: Serves ``medseg`` commands on a Unix socket: per connection it receives the client's stdin, stdout and stderr
#: (as file descriptors), then its arguments, folder and environment; forks a child that runs the CLI there, and
#: sends back the child's exit status (128 + N for a child killed by signal N). One command at a time.
FORK_SERVER = r'''
import json, os, signal, socket, sys, traceback
import torch, monai  # the imports every medseg command pays for
import medseg.cli.main
import medseg.training.loop

server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    payload = b""
    while chunk := conn.recv(65536):
        payload += chunk
    request = json.loads(payload)
    pid = os.fork()
    if pid == 0:
        server.close()
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["medseg", *request["args"]]
        code = 0
        try:
            medseg.cli.main.main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    conn.sendall(str(code).encode())
    conn.close()
'''

#: The ``medseg`` command of a page: hands its stdin, stdout, stderr, arguments, folder and environment to the
#: fork server and exits with the command's status (standard library only: it starts in milliseconds).
FORK_CLIENT = r'''
import json, os, socket, sys
if not os.path.exists(sys.argv[1]):  # no server for this page: a fresh interpreter
    os.execv(sys.executable, [sys.executable, "-m", "medseg.cli.main", *sys.argv[2:]])
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(sys.argv[1])
socket.send_fds(client, [b"."], [0, 1, 2])
client.sendall(json.dumps({"args": sys.argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)}).encode())
client.shutdown(socket.SHUT_WR)
reply = b""
while chunk := client.recv(64):
    reply += chunk
sys.exit(int(reply) if reply else 1)
'''


def _shims(folder: Path, socket_path: Path) -> Path:
    """A bin folder whose ``python`` is this interpreter and whose ``medseg`` asks the fork server at
    ``socket_path`` (the console script may not be installed)."""
    folder.mkdir()
    (folder / "fork_client.py").write_text(FORK_CLIENT)
    for name, command in (("medseg", f'"{sys.executable}" -S -E "{folder / "fork_client.py"}" "{socket_path}" "$@"'),
                          ("python", f'"{sys.executable}" "$@"')):
        path = folder / name
        path.write_text(f"#!/bin/sh\nexec {command}\n")
        path.chmod(0o755)
    return folder


def _start_fork_server(socket_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """The fork server of :data:`FORK_SERVER`, once it listens on ``socket_path``."""
    log = socket_path.with_suffix(".log")
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(socket_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = server.stdout.readline() if server.stdout else ""
    if line.strip() != "ready":
        server.kill()
        server.wait(60)
        raise AssertionError(f"the tutorial's medseg fork server did not start:\n{log.read_text()[-3000:]}")
    return server


def run_page(page: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run every block of ``page`` in ``workdir``; returns the stdout of each bash block."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medseg-tut-") as sockets:  # short: a socket path has ~100 bytes
        socket_path = Path(sockets) / "medseg.sock"
        bin_dir = _shims(workdir.parent / f"{workdir.name}-bin", socket_path)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if not any(b.lang == "bash" and "medseg" in b.code for b in read_blocks(page)):
            return _run_blocks(page, workdir, env, monkeypatch)
        server = _start_fork_server(socket_path, env)
        try:
            return _run_blocks(page, workdir, env, monkeypatch)
        finally:
            server.kill()
            server.communicate(timeout=60)


def _run_blocks(page: Path, workdir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(workdir)
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    outputs: list[str] = []
    import torch

    for block in read_blocks(page):
        where = f"{page.name}:{block.line}"
        start = time.perf_counter()
        if block.gpu_only and not torch.cuda.is_available():
            continue
        if block.title is not None:
            (workdir / block.title).write_text(block.code, encoding="utf-8")
        elif block.lang == "bash":
            proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.code], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{where} exit {proc.returncode}\n{block.code}\n{proc.stderr[-3000:]}"
            outputs.append(proc.stdout)
        elif block.lang == "python":
            exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the tutorial's own code
        else:
            continue
        print(f"{where} {block.lang} {time.perf_counter() - start:.1f}s")  # shown with -s or on failure
    return outputs


def test_read_blocks_keeps_order_titles_and_indented_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('Text\n\n```bash\necho one\n```\n\n```yaml title="a.yaml"\nk: 1\n```\n\n'
                    '??? example "Folded"\n\n    ```python\n    x = 1\n    ```\n\n```text\nout\n```\n')
    blocks = read_blocks(page)
    assert [(b.lang, b.title, b.code, b.line) for b in blocks] == [
        ("bash", None, "echo one\n", 3), ("yaml", "a.yaml", "k: 1\n", 7), ("python", None, "x = 1\n", 13),
        ("text", None, "out\n", 17)]


def test_every_tutorial_has_expectations():
    assert sorted(p.name for p in TUTORIALS.glob("*.md")) == sorted(EXPECTED)


def test_a_failing_bash_block_fails_the_page(tmp_path, monkeypatch):
    page = tmp_path / "bad.md"
    page.write_text("```bash\ntrue\nfalse\necho never\n```\n")
    with pytest.raises(AssertionError, match=r"bad\.md:1 exit 1"):
        run_page(page, tmp_path / "work", monkeypatch)


def test_medseg_commands_keep_their_folder_input_output_and_exit_status(tmp_path, monkeypatch):
    """The fork server's commands behave like fresh processes: the block's folder, stdin, stdout, exit status."""
    import medseg

    page = tmp_path / "cli.md"
    page.write_text("```bash\nmkdir sub && cd sub && echo 'version: 1' > here.yaml\nmedseg --version\n"
                    "medseg config check here.yaml 2>&1 || echo \"status $?\"\n"
                    "medseg config check /dev/stdin < here.yaml 2>&1 || echo \"status $?\"\n```\n")
    [output] = run_page(page, tmp_path / "work", monkeypatch)
    assert output.splitlines() == [
        f"medseg {medseg.__version__}",
        "error: here.yaml: 1 invalid setting(s): data: Field required", "status 2",
        "error: /dev/stdin: 1 invalid setting(s): data: Field required", "status 2"]


def _check_2d(work: Path, outputs: list[str]) -> None:
    assert (work / "my-polyps" / "images" / "case_011.png").is_file()
    for name in ("config.yaml", "labels.json", "log.json", "curves.png", "preview.png", "checkpoints/best.pt",
                 "splits/train.txt", "splits/val.txt"):
        assert (work / "runs" / "polyps" / name).is_file(), name
    assert len((work / "runs" / "polyps" / "splits" / "val.txt").read_text().split()) == 3  # 12 x 0.25
    ema_log = json.loads((work / "runs" / "polyps-ema" / "log.json").read_text())  # train.ema: 2 steps per epoch
    assert [r["ema_decay"] for r in ema_log] == [2 / 11, 4 / 13]  # warm-up (1 + t) / (10 + t) at steps t = 1, 3
    names = sorted(p.name for p in (work / "predictions").iterdir() if not p.name.startswith("."))
    assert names == sorted([f"case_00{i}{s}.png" for i in range(4) for s in ("", "_overlay")]), names
    records = sorted(p.name for p in (work / "predictions" / ".medseg-predict").iterdir())
    assert records == [f"case_00{i}.json" for i in range(4)], records  # the settings each mask was made with
    rows = (work / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2  # header + 4 cases x (polyp, overall)
    assert json.loads((work / "scores.summary.json").read_text())


def _check_3d(work: Path, outputs: list[str]) -> None:
    assert sorted(p.name for p in (work / "my-spine" / "imagesTr").iterdir()) == [
        f"case_00{i}_0000.nii.gz" for i in range(4)]
    assert "shape (" in outputs[1] and "spacing (1.5, 1.5, 1.5) mm" in outputs[1]  # medseg inspect
    assert (work / "runs" / "spine" / "checkpoints" / "best.pt").is_file()
    assert sorted(p.name for p in (work / "labels").iterdir()) == [
        "case_000.json", "case_000.nii.gz", "case_001.json", "case_001.nii.gz"]
    sidecar = json.loads((work / "labels" / "case_000.json").read_text())
    assert [c["value"] for c in sidecar["classes"]] == [0, 26, 27, 28, 29, 30]
    assert len((work / "spine-scores.csv").read_text().splitlines()) == 1 + 2 * 6  # 5 vertebrae + overall


def _check_dicom(work: Path, outputs: list[str]) -> None:
    assert "studies/patient_c: 2 series (2 usable as volumes)" in outputs[0]
    names = sorted(p.name for p in (work / "seg").iterdir())
    assert names == sorted(f"{case}{suffix}" for case in ("patient_a", "patient_b", "patient_c_01", "patient_c_02")
                           for suffix in (".json", ".nii.gz", ".seg.dcm")), names
    from medseg.io import read_volume

    series, labels = read_volume(work / "studies" / "patient_b"), read_volume(work / "seg" / "patient_b.nii.gz")
    assert series.shape == labels.shape
    assert abs(series.affine - labels.affine).max() < 1e-4


def _check_gpu(work: Path, outputs: list[str]) -> None:
    import torch

    assert f"CUDA available: {torch.cuda.is_available()}" in outputs[0]
    assert (work / "runs" / "spine-gpu" / "checkpoints" / "last.pt").is_file()
    assert (work / "new-scans" / "imagesTr" / "case_000.nii.gz").is_file()
    assert (work / "runs" / "spine-cuda").is_dir() == torch.cuda.is_available()
    assert (work / "labels-cuda" / "case_000.nii.gz").is_file() == torch.cuda.is_available()


def _check_run_folder(work: Path, outputs: list[str]) -> None:
    run = work / "runs" / "tiny"
    listing = outputs[1].split()
    for name in (".lock", "config.yaml", "labels.json", "log.json", "curves.png", "preview.png", "best.pt", "confusion",
                 "confusion_best.png", "last.pt", "train.txt", "val.txt"):
        assert name in listing, name
    assert "polyp" in outputs[2]  # labels.json
    assert [r["epoch"] for r in json.loads((run / "log.json").read_text())] == [1, 2, 3]


EXPECTED = {
    "own-2d-data.md": _check_2d,
    "own-3d-data.md": _check_3d,
    "dicom-studies.md": _check_dicom,
    "gpu.md": _check_gpu,
    "run-folder.md": _check_run_folder,
}


def _commands_not_run(page: Path) -> list[tuple[str, str]]:
    """``medseg ...`` lines of the blocks a CPU run of the tests does not execute (text blocks, GPU-only blocks)."""
    lines = []
    for block in read_blocks(page):
        if block.lang in ("text", "console") or block.gpu_only:
            lines += [(f"{page.name}:{block.line}", line.split("  #")[0].strip())
                      for line in block.code.splitlines() if line.startswith("medseg ")]
    return lines


#: pages with commands for the reader to type (the reference pages show usage patterns instead)
COMMAND_PAGES = sorted([*TUTORIALS.glob("*.md"), REPO / "docs" / "index.md", REPO / "docs" / "troubleshooting.md"])
NOT_RUN = [command for page in COMMAND_PAGES for command in _commands_not_run(page)]


def test_commands_not_run_are_found():
    assert ("gpu.md:" in " ".join(w for w, _ in NOT_RUN)) and len(NOT_RUN) >= 4, NOT_RUN


@pytest.mark.parametrize(("where", "line"), NOT_RUN, ids=[w for w, _ in NOT_RUN])
def test_commands_shown_but_not_run_still_parse(where, line):
    """A command a page shows without running it names a real command with real options and arguments."""
    import typer.main

    from medseg.cli.main import app

    args = shlex.split(line)[1:]
    command = typer.main.get_command(app)
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    assert not hasattr(command, "commands"), f"{where}: {line!r} names no command"
    command.make_context(line, args)  # parses options and arguments, runs nothing; raises on a bad one


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tutorial_runs(name, tmp_path, monkeypatch):
    work = tmp_path / "work"
    outputs = run_page(TUTORIALS / name, work, monkeypatch)
    EXPECTED[name](work, outputs)
