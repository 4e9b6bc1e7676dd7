"""Read and write 2D image files (photos, endoscopy frames, X-ray and microscopy images, masks) with Pillow.

Images come back as numpy arrays in storage order (rows, columns): ``(H, W)`` or ``(H, W, C)``.
EXIF orientation tags are not applied, so an image and its mask stay aligned pixel for pixel.
Truncated or corrupt files and decompression bombs raise :class:`~medseg.errors.DataError`.

Bit depth is kept: 16-bit gray PNG/TIFF come back as uint16, 32-bit integer TIFF (and signed 16-bit TIFF,
which Pillow widens) as int32, 32-bit float TIFF as float32 (:func:`read_image_values`). What is never read
silently wrong is refused with one line naming the file: a multi-page TIFF (or animated GIF/PNG), a colour image
with 16 bits per channel (Pillow would keep 8 of them), and a 16-bit or float image asked for as 8-bit RGB/L.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from medseg.atomic import atomic_path
from medseg.errors import DataError
from medseg.io.volume import input_kind

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "display_uint8",
    "image_dtype",
    "image_size",
    "read_image",
    "read_image_values",
    "read_mask",
    "write_mask",
    "blend_overlay",
    "write_overlay",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""Lower-case suffixes of the image files medseg reads."""

MASK_SUFFIXES: tuple[str, ...] = (*IMAGE_SUFFIXES, ".gif")
"""Lower-case suffixes of mask files (GIF too, as in the Carvana dataset)."""

MAX_IMAGE_PIXELS = 178_956_970
"""Largest ``H * W`` accepted (Pillow's default bomb limit, ~ 13,000 x 13,000)."""

_PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF")

# Pillow modes of images deeper than 8 bits per pixel -> the numpy dtype their pixels are returned in
_DEEP_MODES = {"I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I;16N": "uint16", "I": "int32",
               "F": "float32"}

# Class colors for overlays (RGB); class k uses _PALETTE[(k - 1) % len(_PALETTE)].
_PALETTE = np.array(
    [
        (0, 255, 0),
        (255, 0, 0),
        (0, 128, 255),
        (255, 255, 0),
        (255, 0, 255),
        (0, 255, 255),
        (255, 128, 0),
        (128, 0, 255),
        (128, 255, 128),
        (255, 128, 128),
    ],
    dtype=np.float32,
)


@contextmanager
def _open(path: Path, allowed: tuple[str, ...]) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow, turning every failure into one DataError line."""
    if path.suffix.lower() not in allowed:
        raise DataError(
            f"{path}: cannot read image: suffix {path.suffix or '(none)'!r} is not supported; "
            f"allowed: {', '.join(allowed)}"
        )
    kind = input_kind(path, "image")
    if kind == "missing":
        raise DataError(f"{path}: cannot read image: file does not exist")
    if kind == "dir":
        raise DataError(f"{path}: cannot read image: is a folder; allowed an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"{path}: cannot read image: {err}; at most {MAX_IMAGE_PIXELS} pixels are allowed"
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(
            f"{path}: cannot read image: {err}; the file is truncated, corrupt or not a "
            f"{'/'.join(_PIL_FORMATS)} image"
        ) from err
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: cannot read image: {width} x {height} pixels is more than "
                f"the {MAX_IMAGE_PIXELS} allowed (possible decompression bomb)"
            )
        _check_single_page(path, image)
        _check_color_depth(path, image)
        yield image


def _check_single_page(path: Path, image: Image.Image) -> None:
    """Refuse files with several pages or frames: reading the first one alone would be silently partial."""
    try:
        frames = int(getattr(image, "n_frames", 1))
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataError(f"{path}: cannot read image: {err}; the file is truncated or corrupt") from err
    if frames > 1:
        raise DataError(
            f"{path}: holds {frames} pages ({image.format}); medseg reads one 2D image per file: save each page "
            "as its own file, or the stack as a volume (e.g. NIfTI)"
        )


def _check_color_depth(path: Path, image: Image.Image) -> None:
    """Refuse colour images with 16 bits per channel, which Pillow decodes to 8 bits without a word."""
    tiles = getattr(image, "tile", None)  # an ImageFile's undecoded tiles; typed on ImageFile only
    if image.mode in _DEEP_MODES or not tiles:
        return
    args = tiles[0].args
    rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
    if isinstance(rawmode, str) and ";16" in rawmode:
        raise DataError(
            f"{path}: colour image with 16 bits per channel ({rawmode}); it cannot be read without dropping "
            "8 bits of each channel: save it as 16-bit gray, or as 8-bit RGB"
        )


def _decode(path: Path, image: Image.Image) -> None:
    """Decode all pixels so truncated or corrupt data fails here, not later."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read image: {err}; the file is truncated or corrupt, "
            "re-export or re-download it"
        ) from err


def read_image(path: Path, *, mode: Literal["RGB", "L"] | None = "RGB") -> np.ndarray:
    """Read a 2D image file into a numpy array.

    Args:
        path: A ``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.tif`` or ``.tiff`` file.
        mode: ``"RGB"`` returns ``(H, W, 3)`` uint8, ``"L"`` returns ``(H, W)`` uint8 gray,
            ``None`` returns the stored pixels unchanged (e.g. ``(H, W)`` uint16 for a 16-bit PNG,
            ``(H, W, 3)`` uint8 for RGB, ``(H, W)`` palette indices for a palette image).

    Returns:
        The pixel array in storage order (rows, columns[, channels]).

    Raises:
        ValueError: If ``mode`` is not one of the allowed values.
        DataError: If the file is missing, has an unsupported suffix, is truncated or corrupt,
            or is larger than :data:`MAX_IMAGE_PIXELS`.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_mask(folder / "m.png", np.zeros((4, 6), dtype=np.uint8))
        >>> read_image(folder / "m.png").shape
        (4, 6, 3)
    """
    if mode not in ("RGB", "L", None):
        raise ValueError(f"mode must be 'RGB', 'L' or None, got {mode!r}")
    path = Path(path)
    with _open(path, IMAGE_SUFFIXES) as image:
        _decode(path, image)
        if mode is not None and image.mode in _DEEP_MODES:
            raise DataError(
                f"{path}: {_depth_name(image.mode)} image (Pillow mode {image.mode}); reading it as 8-bit {mode} "
                "would clip its values: read it with read_image_values (or mode=None)"
            )
        if mode is not None and image.mode != mode:
            try:
                image = image.convert(mode)
            except (ValueError, OSError) as err:
                raise DataError(
                    f"{path}: cannot read image: cannot convert Pillow mode {image.mode} "
                    f"to {mode}: {err}; use mode=None for the stored pixels"
                ) from err
        return _stored(image)


def _stored(image: Image.Image) -> np.ndarray:
    """The decoded pixels in their own dtype (native byte order)."""
    array = np.array(image)
    dtype = _DEEP_MODES.get(image.mode)
    return array.astype(dtype, copy=False) if dtype is not None else array


def _depth_name(mode: str) -> str:
    return {"uint16": "16-bit", "int32": "32-bit integer", "float32": "32-bit float"}[_DEEP_MODES[mode]]


def read_image_values(path: Path, *, color: Literal["rgb", "gray"]) -> np.ndarray:
    """Read a 2D image with its values kept at their bit depth.

    8-bit images (JPEG, 8-bit PNG/BMP/TIFF, palette images) come back converted to ``color``: ``(H, W, 3)`` or
    ``(H, W)`` uint8. Deeper gray images come back as stored, whatever ``color``: ``(H, W)`` uint16 (16-bit
    PNG/TIFF), int32 (32-bit or signed 16-bit integer TIFF) or float32 (32-bit float TIFF); whether a model takes
    them is the caller's decision (see :mod:`medseg.data.image_intensity`).

    Args:
        path: A file with one of :data:`IMAGE_SUFFIXES`.
        color: ``"rgb"`` or ``"gray"``, for 8-bit images.

    Returns:
        The pixel array in storage order.

    Raises:
        ValueError: If ``color`` is not ``"rgb"`` or ``"gray"``.
        DataError: As :func:`read_image`, and for multi-page files and colour images with 16 bits per channel.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "x.png"
        >>> _ = write_mask(out, np.array([[0, 300], [4095, 65535]], dtype=np.uint16))
        >>> read_image_values(out, color="rgb").tolist()
        [[0, 300], [4095, 65535]]
    """
    if color not in ("rgb", "gray"):
        raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
    path = Path(path)
    if image_dtype(path) != np.uint8:
        return read_image(path, mode=None)
    return read_image(path, mode="RGB" if color == "rgb" else "L")


def image_dtype(path: Path) -> np.dtype:
    """The dtype :func:`read_image_values` returns for ``path``, from the header (no pixels decoded).

    Returns:
        ``uint8`` for 8-bit images, ``uint16``, ``int32`` or ``float32`` for deeper ones.

    Raises:
        DataError: As :func:`read_image_values`.
    """
    with _open(Path(path), IMAGE_SUFFIXES) as image:
        return np.dtype(_DEEP_MODES.get(image.mode, "uint8"))


def display_uint8(array: np.ndarray) -> np.ndarray:
    """An image as uint8 for display (overlays): uint8 as is, other dtypes stretched from their min..max to 0..255.

    Example:
        >>> display_uint8(np.array([[1000, 3000]], dtype=np.uint16)).tolist()
        [[0, 255]]
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file and return its stored gray values.

    Palette images (GIF, palette PNG) are mapped through their palette: to ``(H, W)`` gray
    values when the palette is gray, else to ``(H, W, 3)`` RGB. 1-bit images become 0/255.
    Everything else is returned as stored, e.g. ``(H, W)`` uint16 for a 16-bit PNG, or
    ``(H, W, 3)`` for an RGB JPEG mask (Kvasir-SEG); reducing channels is left to the caller.

    Args:
        path: A mask file with one of :data:`MASK_SUFFIXES`.

    Returns:
        The mask array, ``(H, W)`` or ``(H, W, C)``.

    Raises:
        DataError: If the file cannot be read (see :func:`read_image`).
    """
    path = Path(path)
    with _open(path, MASK_SUFFIXES) as image:
        _decode(path, image)
        if image.mode in ("P", "PA"):
            rgb = image.convert("RGB")
            array = np.array(rgb)
            if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
                array[..., 0], array[..., 2]
            ):
                return np.ascontiguousarray(array[..., 0])
            return array
        if image.mode == "1":
            return np.array(image.convert("L"))
        return _stored(image)


def image_size(path: Path) -> tuple[int, int]:
    """Return ``(H, W)`` of an image or mask file, read from its header without decoding pixels.

    Args:
        path: A file with one of :data:`MASK_SUFFIXES`.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        DataError: If the file is missing, unsupported, unreadable or too large.
    """
    path = Path(path)
    with _open(path, MASK_SUFFIXES) as image:
        width, height = image.size
    return height, width


def _atomic_save(image: Image.Image, path: Path) -> Path:
    """Save ``image`` as PNG to a temp file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: output must be a .png file (lossless), got {path.suffix!r}")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """Write a mask as a lossless PNG, atomically (temp file in the same folder + rename).

    Args:
        path: Output ``.png`` path; parent folders are created. An existing file is replaced.
        mask: ``(H, W)`` uint8 or uint16 class values, or ``(H, W, 3)`` uint8. Bool masks are
            written as 0/255.

    Returns:
        ``path``.

    Raises:
        ValueError: If ``path`` is not ``.png`` or ``mask`` has an unsupported dtype or shape.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "mask.png"
        >>> _ = write_mask(out, np.array([[0, 1], [2, 300]], dtype=np.uint16))
        >>> read_mask(out).tolist()
        [[0, 1], [2, 300]]
    """
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mask dtype must be uint8, uint16 or bool, got {mask.dtype}")
    if mask.ndim == 3 and (mask.shape[2] != 3 or mask.dtype != np.uint8):
        raise ValueError(f"a 3D mask must be (H, W, 3) uint8, got {mask.shape} {mask.dtype}")
    if mask.ndim not in (2, 3) or 0 in mask.shape:
        raise ValueError(f"mask must be (H, W) or (H, W, 3) and non-empty, got shape {mask.shape}")
    return _atomic_save(Image.fromarray(np.ascontiguousarray(mask)), Path(path))


def _boundary(classes: np.ndarray) -> np.ndarray:
    """Foreground pixels whose class differs from one of their 4 neighbours."""
    padded = np.pad(classes, 1, mode="edge")
    center = padded[1:-1, 1:-1]
    edge = np.zeros(classes.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        edge |= shifted != center
    return edge & (classes > 0)


def blend_overlay(image_rgb: np.ndarray, mask_classes: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """An RGB uint8 picture of class colors blended over an image, with class contours.

    Class 0 is background and left as is. Class ``k`` is tinted with a fixed color
    (green, red, blue, yellow, ... cycling after 10 classes) and outlined in that color.

    Args:
        image_rgb: ``(H, W, 3)`` or ``(H, W)`` uint8 image.
        mask_classes: ``(H, W)`` integer class indices (0 = background).
        alpha: Opacity of the class color, in ``[0, 1]``.

    Raises:
        ValueError: If shapes, dtypes or ``alpha`` are invalid.
    """
    image = np.asarray(image_rgb)
    classes = np.asarray(mask_classes)
    if image.dtype != np.uint8:
        raise ValueError(f"image_rgb must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must be (H, W, 3) or (H, W), got shape {image.shape}")
    if classes.shape != image.shape[:2]:
        raise ValueError(f"mask_classes shape {classes.shape} != image shape {image.shape[:2]}")
    if not np.issubdtype(classes.dtype, np.integer) and classes.dtype != np.bool_:
        raise ValueError(f"mask_classes must hold integers, got {classes.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    classes = classes.astype(np.int64)
    if classes.min(initial=0) < 0:
        raise ValueError("mask_classes must be >= 0")
    colors = np.zeros((*classes.shape, 3), dtype=np.float32)
    foreground = classes > 0
    colors[foreground] = _PALETTE[(classes[foreground] - 1) % len(_PALETTE)]
    out = image.astype(np.float32)
    out[foreground] = (1.0 - alpha) * out[foreground] + alpha * colors[foreground]
    edge = _boundary(classes)
    out[edge] = colors[edge]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_overlay(
    path: Path, image_rgb: np.ndarray, mask_classes: np.ndarray, *, alpha: float = 0.4
) -> Path:
    """Write :func:`blend_overlay` as a PNG, atomically (an existing file is replaced).

    Returns:
        ``path``.

    Raises:
        ValueError: If shapes, dtypes or ``alpha`` are invalid.
    """
    return _atomic_save(Image.fromarray(blend_overlay(image_rgb, mask_classes, alpha=alpha)), Path(path))
