"""medseg.doctor: the report's facts agree with the modules themselves, and a missing part fails the check."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

import pytest

import medseg
import medseg.doctor as doctor
import medseg.io.decoders as decoders
from medseg.doctor import DoctorReport, Package, check_environment, package_version

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report() -> DoctorReport:
    return check_environment()


def test_versions_are_those_of_the_running_modules(report):
    import monai
    import numpy
    import pydicom
    import torch

    assert report.medseg_version == medseg.__version__
    assert report.python_version == platform.python_version() and report.python_executable == sys.executable
    assert report.version("torch") == torch.__version__
    assert report.version("monai") == monai.__version__
    assert report.version("numpy") == numpy.__version__
    assert report.version("pydicom") == pydicom.__version__
    with pytest.raises(KeyError, match="'tensorflow' is not among"):
        report.version("tensorflow")


def test_cuda_bf16_and_disk_agree_with_torch_and_the_os(report, tmp_path):
    import torch

    from medseg.sliding_window.plan import cpu_has_native_bf16

    assert len(report.cuda_devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for device in report.cuda_devices:
        assert device.name == torch.cuda.get_device_name(device.index)
        assert 0 < device.free_bytes <= device.total_bytes
    assert report.cpu_native_bf16 == cpu_has_native_bf16()
    assert report.folder == Path.cwd().resolve()
    elsewhere = check_environment(tmp_path)
    assert elsewhere.folder == tmp_path.resolve()
    assert abs(elsewhere.free_bytes - shutil.disk_usage(tmp_path).free) < 2**30  # others write meanwhile


def test_complete_installation_is_ok_and_text_says_so(report):
    assert report.ok and report.missing == []
    text = report.text()
    assert text.splitlines()[0] == f"medseg {medseg.__version__}"
    assert text.splitlines()[-1] == "ok: everything the default pipelines need is installed"
    for name in ("python", "torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom", "highdicom", "pillow",
                 "onnxruntime", "tensorboard", "CUDA", "CPU bf16", "disk"):
        assert f"\n{name} " in text or f"  {name} " in text, name
    assert len(text.splitlines()) <= 40  # one screen


def test_missing_required_package_fails_the_check_naming_the_pip_package(monkeypatch):
    real = doctor.package_version
    gone = ("torch", "pillow", "scipy")
    monkeypatch.setattr(doctor, "package_version", lambda p: None if p.name in gone else real(p))
    report = check_environment()
    assert not report.ok
    assert report.missing == ["torch (pip install torch)", "pillow (pip install pillow)", "scipy (pip install scipy)"]
    assert report.cuda_devices == () and report.cpu_native_bf16 is None  # torch is not asked when missing
    text = report.text()
    assert "torch        not installed (pip install torch)" in text
    assert "other deps   11 of 12 installed, not installed: scipy" in text
    assert text.splitlines()[-1] == ("missing: torch (pip install torch); pillow (pip install pillow); "
                                     "scipy (pip install scipy)")


def test_missing_optional_package_is_reported_but_not_a_failure(monkeypatch):
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda p: None if p.name == "onnxruntime" else real(p))
    report = check_environment()
    assert report.ok and report.version("onnxruntime") is None
    assert "onnxruntime  not installed (pip install onnxruntime)" in report.text()


def test_no_decoder_for_uncompressed_dicom_fails_the_check(monkeypatch):
    monkeypatch.setattr(decoders, "pydicom_decoders", lambda uid: ())
    report = check_environment()
    assert report.missing == [
        "a decoder for DICOM Explicit VR Little Endian (pip install --upgrade 'pydicom>=3')",
        "a decoder for DICOM Implicit VR Little Endian (pip install --upgrade 'pydicom>=3')",
    ]


def test_package_version_reads_metadata_without_importing():
    assert package_version(Package("numpy", "numpy", "numpy")) == __import__("numpy").__version__
    assert package_version(Package("x", "medseg_no_such_module", "x")) is None


def test_folder_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"folder: .*nope is not an existing folder"):
        check_environment(tmp_path / "nope")


def test_required_packages_are_the_projects_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert {p.pip.lower() for p in doctor.REQUIRED} == names


def test_cuda_devices_lists_name_total_and_free_memory(monkeypatch):
    import torch

    from medseg.device import CudaDevice, cuda_devices

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((10 + i) * gib, 80 * gib))  # (free, total)
    assert cuda_devices() == [CudaDevice(0, "GPU 0", 80 * gib, 10 * gib), CudaDevice(1, "GPU 1", 80 * gib, 11 * gib)]


def test_cuda_lines_of_the_report(report):
    from dataclasses import replace

    from medseg.device import CudaDevice

    gib = 2**30
    two = replace(report, cuda_devices=(CudaDevice(0, "NVIDIA H200", 141 * gib, int(140.5 * gib)),
                                        CudaDevice(1, "NVIDIA H200", 141 * gib, 3 * gib)), cuda_note="")
    lines = two.text().splitlines()
    start = lines.index("CUDA         cuda:0 NVIDIA H200: 141.0 GiB total, 140.5 GiB free")
    assert lines[start + 1] == "             cuda:1 NVIDIA H200: 141.0 GiB total, 3.0 GiB free"
    none = replace(report, cuda_devices=(), cuda_note="torch is a CPU-only build")
    assert "CUDA         no CUDA device (torch is a CPU-only build)" in none.text().splitlines()
