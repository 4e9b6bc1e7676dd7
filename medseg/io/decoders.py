"""Which DICOM transfer syntaxes this installation can decode, and what to install for the others.

medseg reads pixel data two ways (:mod:`medseg.io.dicom`): JPEG 2000 and HTJ2K slices through imagecodecs'
OpenJPEG decoder, and JPEG slices (baseline, extended 12-bit, lossless) through imagecodecs' libjpeg-turbo, both
in threads; everything else (colour, multi-frame, and any JPEG 2000 slice imagecodecs cannot vouch for) through
pydicom, whose decoder registry (``pydicom.pixels.decoders``) knows which plug-ins are installed. This module asks
both, without decoding anything, so that ``medseg doctor`` can say what a DICOM folder needs before it is read.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JPEG2000_SYNTAXES",
    "JPEG_SYNTAXES",
    "TRANSFER_SYNTAXES",
    "SyntaxSupport",
    "decoder_support",
    "imagecodecs_decoder",
    "jpeg2k_decoder",
    "jpeg_decoder",
    "pydicom_alternatives",
    "pydicom_decoders",
    "syntax_support",
]

#: The transfer syntaxes medseg reports on: UID -> short name, in the order ``medseg doctor`` lists them.
TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}

#: JPEG 2000 (lossless, lossy) and HTJ2K: medseg decodes these with imagecodecs when it is installed.
JPEG2000_SYNTAXES: frozenset[str] = frozenset({
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
})

#: JPEG baseline (8-bit), extended (12-bit) and lossless (Process 14, and its selection value 1): medseg decodes
#: these with imagecodecs' libjpeg-turbo when it is built for every sample precision (libjpeg-turbo 3).
JPEG_SYNTAXES: frozenset[str] = frozenset({
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
})

#: pydicom's decoder plug-in modules (``pydicom.pixels.decoders.<name>``), each with ``DECODER_DEPENDENCIES``.
_PLUGIN_MODULES = ("pylibjpeg", "pyjpegls", "gdcm", "pillow", "rle")
#: import names whose pip package is called differently
_PIP_NAMES = {"gdcm": "python-gdcm"}


@dataclass(frozen=True)
class SyntaxSupport:
    """What decodes one transfer syntax here, or what to install when nothing does.

    Attributes:
        uid: Transfer Syntax UID.
        name: Short name, e.g. ``"JPEG 2000 Lossless"``.
        decoders: What decodes it, in the order medseg uses them (``"imagecodecs"`` for medseg's own JPEG 2000
            and JPEG paths, otherwise pydicom's plug-in labels; ``"pydicom"`` for the syntaxes pydicom reads itself).
        install: When ``decoders`` is empty, alternative pip arguments that would add a decoder, best first
            (e.g. ``("pylibjpeg-libjpeg", "python-gdcm")``); empty otherwise.
    """

    uid: str
    name: str
    decoders: tuple[str, ...]
    install: tuple[str, ...] = ()

    @property
    def decodable(self) -> bool:
        """True when at least one installed decoder handles this syntax."""
        return bool(self.decoders)

    def hint(self) -> str:
        """``"pip install X"`` (with ``"or: pip install Y"`` alternatives), or ``""`` when decodable.

        Example:
            >>> SyntaxSupport("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", (),
            ...               ("pylibjpeg-libjpeg", "python-gdcm")).hint()
            'pip install pylibjpeg-libjpeg (or: pip install python-gdcm)'
        """
        if self.decoders or not self.install:
            return ""
        first, *others = self.install
        return f"pip install {first}" + "".join(f" (or: pip install {other})" for other in others)


def jpeg2k_decoder() -> Any:
    """imagecodecs' ``jpeg2k_decode`` (OpenJPEG, GIL released; also reads HTJ2K), or None where it is missing."""
    try:
        from imagecodecs import jpeg2k_decode
    except ImportError:
        return None
    return jpeg2k_decode


def jpeg_decoder() -> Any:
    """imagecodecs' ``jpeg8_decode`` where it is built on libjpeg-turbo 3 with every precision, else None.

    That build decodes lossy JPEG of 8 and 12 bits and lossless JPEG of 2 to 16 bits, every predictor and point
    transform, releasing the GIL. Older builds (libjpeg-turbo 2, 8-bit only) are not used: pydicom's plug-ins
    decode what they can instead.
    """
    try:
        import imagecodecs
    except ImportError:
        return None
    codec = getattr(imagecodecs, "JPEG8", None)
    if not (getattr(codec, "available", False) and getattr(codec, "all_precisions", False)):
        return None
    return imagecodecs.jpeg8_decode


def imagecodecs_decoder(uid: str) -> Any:
    """The imagecodecs decoder medseg uses for the transfer syntax ``uid``, or None (pydicom decodes it).

    Example:
        >>> imagecodecs_decoder("1.2.840.10008.1.2.1") is None  # uncompressed: pydicom reads it
        True
    """
    if uid in JPEG2000_SYNTAXES:
        return jpeg2k_decoder()
    if uid in JPEG_SYNTAXES:
        return jpeg_decoder()
    return None


def pydicom_decoders(uid: str) -> tuple[str, ...]:
    """pydicom's decoders for ``uid`` that are installed, as its registry reports them.

    Returns:
        The available plug-in labels (e.g. ``("pillow", "pylibjpeg")``); ``("pydicom",)`` for the native
        (uncompressed, deflated, big endian) syntaxes, which pydicom decodes itself; ``()`` when none is installed,
        the UID is not one pydicom decodes, or pydicom is older than 3.0 (no ``pydicom.pixels``).
    """
    try:
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(uid)
    except (ImportError, NotImplementedError):
        return ()
    if not decoder.is_available:
        return ()
    return tuple(decoder.available_plugins) or ("pydicom",)


def pydicom_alternatives(uid: str) -> list[tuple[str, ...]]:
    """pip packages each of pydicom's plug-ins needs to decode ``uid``, from the plug-ins' ``DECODER_DEPENDENCIES``.

    Returns:
        One tuple of pip names per plug-in that handles ``uid`` (e.g. ``("pylibjpeg", "pylibjpeg-libjpeg")``),
        in medseg's order of preference; plug-ins without dependencies (pydicom's own RLE) are left out.
    """
    out: list[tuple[str, ...]] = []
    for name in _PLUGIN_MODULES:
        try:
            module = importlib.import_module(f"pydicom.pixels.decoders.{name}")
        except ImportError:
            continue
        requirements = getattr(module, "DECODER_DEPENDENCIES", {}).get(uid, ())
        packages = tuple(_pip_name(req) for req in requirements if _pip_name(req) != "numpy")
        if packages:
            out.append(packages)
    return out


def decoder_support() -> list[SyntaxSupport]:
    """Each syntax of :data:`TRANSFER_SYNTAXES` with what decodes it here (nothing is decoded; availability only).

    Returns:
        One :class:`SyntaxSupport` per syntax, in the order of :data:`TRANSFER_SYNTAXES`.

    Example:
        >>> table = decoder_support()
        >>> [row.decoders for row in table if row.name == "Explicit VR Little Endian"]
        [('pydicom',)]
    """
    return [syntax_support(uid) for uid in TRANSFER_SYNTAXES]


def syntax_support(uid: str) -> SyntaxSupport:
    """What decodes the transfer syntax ``uid`` here, or what to install (see :class:`SyntaxSupport`).

    Args:
        uid: A Transfer Syntax UID; one outside :data:`TRANSFER_SYNTAXES` is named by pydicom's UID dictionary.

    Example:
        >>> syntax_support("1.2.840.10008.1.2").decoders
        ('pydicom',)
    """
    decoders = pydicom_decoders(uid)
    if imagecodecs_decoder(uid) is not None:
        decoders = ("imagecodecs", *decoders)
    install: tuple[str, ...] = ()
    if not decoders:
        ours = uid in JPEG2000_SYNTAXES or uid in JPEG_SYNTAXES
        options = ([("imagecodecs",)] if ours else []) + pydicom_alternatives(uid)
        # the native syntaxes have no plug-ins: pydicom reads them itself from 3.0 on
        install = _install_options(options) or (("--upgrade 'pydicom>=3'",) if uid in TRANSFER_SYNTAXES else ())
    return SyntaxSupport(uid, TRANSFER_SYNTAXES.get(uid) or _uid_name(uid) or "no transfer syntax", decoders, install)


def _install_options(options: list[tuple[str, ...]]) -> tuple[str, ...]:
    """pip arguments for each alternative: its packages not yet installed, fewest first (stable otherwise).

    An alternative whose packages are all installed yet does not decode (too old, or built without the codec)
    becomes ``--upgrade`` of those packages, after the others.
    """
    scored = []
    for rank, packages in enumerate(options):
        missing = [p for p in packages if not _installed(p)]
        if missing:
            scored.append((len(missing), rank, " ".join(missing)))
        else:
            scored.append((len(packages) + 100, rank, "--upgrade " + " ".join(packages)))
    seen: list[str] = []
    for _, _, args in sorted(scored):
        if args not in seen:
            seen.append(args)
    return tuple(seen[:2])


def _uid_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        return UID(uid).name
    except ImportError:
        return uid


def _pip_name(requirement: str) -> str:
    """``"gdcm>=3.0.10"`` -> ``"python-gdcm"``; ``"pylibjpeg-libjpeg>=2.1"`` -> ``"pylibjpeg-libjpeg"``."""
    name = requirement
    for sep in "<>=!~;[ ":
        name = name.split(sep, 1)[0]
    return _PIP_NAMES.get(name, name)


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
