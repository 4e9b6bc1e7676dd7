"""`medseg --version`, `python -m medseg` and `medseg doctor`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import medseg
import medseg.doctor as doctor
from medseg.cli.main import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

UIDS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"]
DECODERS = {"pydicom", "imagecodecs", "pylibjpeg", "pillow", "pyjpegls", "gdcm"}


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_version_option():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"medseg {medseg.__version__}\n"


def test_python_m_medseg_is_the_same_command_line():
    version = _python_m("--version")
    assert version.returncode == 0 and version.stdout == f"medseg {medseg.__version__}\n"
    usage = _python_m("inspect", "--help")
    assert usage.returncode == 0 and "Usage: medseg inspect" in usage.stdout  # named medseg, not __main__.py
    bad = _python_m("no-such-command")
    assert bad.returncode == 2 and "No such command 'no-such-command'" in bad.stderr


def test_importing_main_module_does_not_run_the_cli():
    code = "import medseg.__main__, sys; print('imported', 'medseg.doctor' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "imported False\n", proc.stderr


def test_doctor_exits_0_and_lists_every_syntax_with_a_decoder_or_a_hint():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for uid in UIDS:
        line = next(line for line in lines if line.split()[:1] == [uid])
        found = line.split("  ")[-1].strip()
        if found.startswith("none: "):
            assert "pip install " in found, line
        else:
            assert set(found.split(", ")) <= DECODERS, line
    assert lines[-1] == "ok: everything the default pipelines need is installed"


def test_doctor_exits_1_naming_the_missing_package(monkeypatch):
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda p: None if p.name == "monai" else real(p))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "error: missing monai (pip install monai)" in result.output  # stderr (mixed in by the runner)
    assert "missing: monai (pip install monai)" in result.output.splitlines()


def test_doctor_in_the_python_api_is_what_the_cli_prints(monkeypatch):
    report = doctor.check_environment()
    monkeypatch.setattr(doctor, "check_environment", lambda: report)
    result = runner.invoke(app, ["doctor"])
    assert result.output == report.text() + "\n"
