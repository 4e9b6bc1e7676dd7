"""``medseg doctor``: is everything the default pipelines need installed, and what does this machine offer?

One call, :func:`check_environment`, returns a :class:`DoctorReport`: versions of medseg, Python and the packages
it builds on (optional ones as "not installed"), the CUDA devices with their memory, whether the CPU has native
bf16, which DICOM transfer syntaxes can be decoded (and what to install for the others), and the free disk space.
Nothing is decoded or trained: it only asks the installed packages what they offer, so it takes seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medseg.device import CudaDevice
    from medseg.io.decoders import SyntaxSupport

__all__ = ["OPTIONAL", "REQUIRED", "DoctorReport", "PackageStatus", "check_environment"]


@dataclass(frozen=True)
class Package:
    """A package medseg uses: the name shown, its import name, its pip name."""

    name: str
    module: str
    pip: str


#: medseg's dependencies (pyproject.toml [project.dependencies]); the first eight are shown with their version.
REQUIRED: tuple[Package, ...] = (
    Package("torch", "torch", "torch"),
    Package("monai", "monai", "monai"),
    Package("numpy", "numpy", "numpy"),
    Package("nibabel", "nibabel", "nibabel"),
    Package("SimpleITK", "SimpleITK", "SimpleITK"),
    Package("pydicom", "pydicom", "pydicom"),
    Package("highdicom", "highdicom", "highdicom"),
    Package("pillow", "PIL", "pillow"),
    Package("scipy", "scipy", "scipy"),
    Package("pylibjpeg", "pylibjpeg", "pylibjpeg"),
    Package("pylibjpeg-openjpeg", "openjpeg", "pylibjpeg-openjpeg"),
    Package("imagecodecs", "imagecodecs", "imagecodecs"),
    Package("pyjpegls", "jpeg_ls", "pyjpegls"),
    Package("scikit-image", "skimage", "scikit-image"),
    Package("matplotlib", "matplotlib", "matplotlib"),
    Package("pyyaml", "yaml", "pyyaml"),
    Package("pydantic", "pydantic", "pydantic"),
    Package("typer", "typer", "typer"),
    Package("rich", "rich", "rich"),
    Package("einops", "einops", "einops"),  # imported by MONAI's SwinUNETR (model.name: swin_unetr)
)
_SHOWN = 8

#: Optional parts: reported with their version, or as "not installed".
OPTIONAL: tuple[Package, ...] = (
    Package("onnxruntime", "onnxruntime", "onnxruntime"),  # predict on .onnx (extra: onnx)
    Package("onnx", "onnx", "onnx"),  # export --format onnx (extra: onnx)
    Package("onnxscript", "onnxscript", "onnxscript"),  # PyTorch's ONNX exporter (extra: onnx)
    Package("pytorch-ignite", "ignite", "pytorch-ignite"),  # running an exported bundle (extra: bundle)
    Package("fire", "fire", "fire"),  # python -m monai.bundle run (extra: bundle)
    Package("tensorboard", "tensorboard", "tensorboard"),  # train.tensorboard (extra: tensorboard)
)

#: Syntaxes every DICOM folder of the default pipelines may use: missing decoders for these fail the check.
_NEEDED_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True)
class PackageStatus:
    """One package: its installed version, or None when it is not installed.

    Attributes:
        name: Name shown (``"pillow"``, ``"SimpleITK"``).
        pip: What ``pip install`` takes to add it.
        version: Installed version (``"unknown"`` when importable without distribution metadata), or None.
        required: True for medseg's dependencies, False for optional parts.
    """

    name: str
    pip: str
    version: str | None
    required: bool

    @property
    def installed(self) -> bool:
        """True when the package can be imported."""
        return self.version is not None


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`check_environment` found; :meth:`text` is what ``medseg doctor`` prints.

    Attributes:
        medseg_version: ``medseg.__version__``.
        python_version: e.g. ``"3.11.9"``.
        python_executable: The interpreter running medseg.
        packages: Required packages (in :data:`REQUIRED` order), then the optional ones.
        cuda_devices: The CUDA devices torch can use (empty without CUDA).
        cuda_note: Why there is no CUDA device when that can be told (``"torch is a CPU-only build"``), else ``""``.
        cpu_native_bf16: Whether the CPU has native bf16 instructions; None when torch could not be asked.
        syntaxes: The DICOM transfer syntaxes with their decoders here (see :mod:`medseg.io.decoders`).
        folder: The folder whose disk was measured.
        free_bytes: Free space on that disk.
    """

    medseg_version: str
    python_version: str
    python_executable: str
    packages: tuple[PackageStatus, ...]
    cuda_devices: tuple[CudaDevice, ...]
    cuda_note: str
    cpu_native_bf16: bool | None
    syntaxes: tuple[SyntaxSupport, ...]
    folder: Path
    free_bytes: int

    def version(self, name: str) -> str | None:
        """Installed version of the package shown as ``name`` (e.g. ``"torch"``), None when not installed.

        Raises:
            KeyError: ``name`` is not a package the doctor checks.
        """
        for package in self.packages:
            if package.name == name:
                return package.version
        raise KeyError(f"{name!r} is not among {[p.name for p in self.packages]}")

    @property
    def missing(self) -> list[str]:
        """What the default pipelines need but is not there, each as ``"what (pip install ...)"``."""
        out = [f"{p.name} (pip install {p.pip})" for p in self.packages if p.required and not p.installed]
        for row in self.syntaxes:
            if row.uid in _NEEDED_SYNTAXES and not row.decodable:
                out.append(f"a decoder for DICOM {row.name} ({row.hint()})")
        return out

    @property
    def ok(self) -> bool:
        """True when nothing the default pipelines need is missing."""
        return not self.missing

    def text(self) -> str:
        """The report on one screen (about 30 lines), as ``medseg doctor`` prints it."""
        lines = [f"medseg {self.medseg_version}", f"{'python':<13}{self.python_version}  {self.python_executable}"]
        shown = [p for p in self.packages if p.required][:_SHOWN] + [p for p in self.packages if not p.required]
        cells = [f"{p.name + ' ':<13}{p.version or 'not installed (pip install ' + p.pip + ')'}" for p in shown]
        width = max(31, *(len(cell) + 2 for cell in cells[::2]))
        pairs = zip(cells[::2], cells[1::2] + [""] * (len(cells) % 2), strict=True)
        lines += [f"{left:<{width}}{right}".rstrip() for left, right in pairs]
        others = [p for p in self.packages if p.required][_SHOWN:]
        absent = [p.name for p in others if not p.installed]
        lines.append(f"{'other deps':<13}" + (f"all {len(others)} installed" if not absent else
                                              f"{len(others) - len(absent)} of {len(others)} installed, "
                                              f"not installed: {', '.join(absent)}"))
        lines += self._cuda_lines()
        bf16 = {True: "native (prediction with --precision auto runs bf16 on CPU)",
                False: "not native (prediction with --precision auto stays fp32 on CPU)",
                None: "unknown (torch is missing)"}[self.cpu_native_bf16]
        lines.append(f"{'CPU bf16':<13}{bf16}")
        lines.append(f"{'disk':<13}{_gib(self.free_bytes)} free in {self.folder}")
        lines.append("DICOM transfer syntaxes (decoders installed, or what to install):")
        for row in self.syntaxes:
            found = ", ".join(row.decoders) if row.decodable else f"none: {row.hint()}"
            lines.append(f"  {row.uid:<25}{row.name:<36}{found}")
        if not self.syntaxes:
            lines.append("  unknown: pydicom is missing or could not be asked")
        missing = self.missing
        lines.append("ok: everything the default pipelines need is installed" if not missing
                     else "missing: " + "; ".join(missing))
        return "\n".join(lines)

    def _cuda_lines(self) -> list[str]:
        if not self.cuda_devices:
            return [f"{'CUDA':<13}no CUDA device" + (f" ({self.cuda_note})" if self.cuda_note else "")]
        return [f"{'CUDA' if i == 0 else '':<13}cuda:{d.index} {d.name}: {_gib(d.total_bytes)} total, "
                f"{_gib(d.free_bytes)} free" for i, d in enumerate(self.cuda_devices)]


def check_environment(folder: Path | str | None = None) -> DoctorReport:
    """Check the installation and this machine, without decoding or running anything heavy.

    Args:
        folder: Folder whose free disk space is reported (default: the current folder).

    Returns:
        The report; ``report.ok`` is False when something the default pipelines need is missing, and
        ``report.text()`` names it with the pip package that adds it.

    Raises:
        ValueError: ``folder`` is not an existing folder.
    """
    from medseg import __version__

    where = Path.cwd() if folder is None else Path(folder)
    if not where.is_dir():
        raise ValueError(f"folder: {where} is not an existing folder")
    packages = tuple(PackageStatus(p.name, p.pip, package_version(p), True) for p in REQUIRED) + tuple(
        PackageStatus(p.name, p.pip, package_version(p), False) for p in OPTIONAL)
    has_torch = any(p.name == "torch" and p.installed for p in packages)
    devices, note = _cuda() if has_torch else ((), "torch is missing")
    return DoctorReport(
        medseg_version=__version__,
        python_version=platform.python_version(),
        python_executable=sys.executable,
        packages=packages,
        cuda_devices=devices,
        cuda_note=note,
        cpu_native_bf16=_native_bf16() if has_torch else None,
        syntaxes=_syntaxes(),
        folder=where.resolve(),
        free_bytes=shutil.disk_usage(where).free,
    )


def package_version(package: Package) -> str | None:
    """Installed version of ``package`` from its distribution metadata (no import); None when not importable.

    Example:
        >>> package_version(Package("no such thing", "medseg_no_such_module", "no-such-thing")) is None
        True
    """
    if importlib.util.find_spec(package.module) is None:
        return None
    try:
        return importlib.metadata.version(package.pip)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cuda() -> tuple[tuple[CudaDevice, ...], str]:
    try:
        import torch

        from medseg.device import cuda_devices

        devices = tuple(cuda_devices())
    except Exception as err:  # noqa: BLE001 (a broken driver or CUDA library is what the doctor must report)
        return (), f"torch could not ask: {type(err).__name__}: {' '.join(str(err).split())[:120]}"
    if devices:
        return devices, ""
    return (), "torch is a CPU-only build" if torch.version.cuda is None else f"torch {torch.__version__} sees none"


def _native_bf16() -> bool | None:
    try:
        from medseg.sliding_window.plan import cpu_has_native_bf16
    except ImportError:
        return None
    return cpu_has_native_bf16()


def _syntaxes() -> tuple[SyntaxSupport, ...]:
    try:
        from medseg.io.decoders import decoder_support
    except ImportError:  # medseg.io needs numpy; the missing package is reported above
        return ()
    return tuple(decoder_support())


def _gib(n: int) -> str:
    """Bytes as GiB with one decimal: ``_gib(3 * 2**30) == '3.0 GiB'``."""
    return f"{n / 2**30:.1f} GiB"
