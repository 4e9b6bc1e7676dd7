"""Pair image files with their mask (label) files, 2D images and volumes alike.

One finder serves both kinds of data (:data:`IMAGES`: PNG/JPEG/... images with PNG/JPEG/GIF masks;
:data:`VOLUMES`: NIfTI/MHA/NRRD volumes with label volumes). Four naming rules cover the common datasets:

- ``same_stem``: ``images/x.jpg`` + ``masks/x.<any ext>`` (Kvasir-SEG). For volumes the nnU-Net channel
  suffix ``_0000`` on the image name is optional (``imagesTr/case_0000.nii.gz`` + ``labelsTr/case.nii.gz``), and
  ``case_0000``, ``case_0001`` ... are the input channels of one case (:attr:`Pair.channels`, in channel order);
  every case must have the same ones (those of `data.channels`, else those most cases have; an odd case is an
  error naming it and its missing or unexpected files).
- ``suffix``: ``train/x.jpg`` + ``train_masks/x_mask.gif`` (Carvana); both may be one folder.
- ``replace``: the mask name is the image name with a token replaced
  (``Slice`` -> ``Labels_slice``).
- ``list``: a text/CSV file with ``image,mask`` per line, paths relative to the dataset root (or absolute).

Case names are file names without their suffix (``case_001.nii.gz`` -> ``case_001``). With ``strict`` (the
default, ``data.strict``) an image without mask, a mask without image or a bad list line is an error;
otherwise it is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from medseg.config.kinds import DataKind
from medseg.config.schema import DataConfig
from medseg.data.pair_list import read_pair_list
from medseg.data.pair_matching import index_by_case, match_pairs
from medseg.data.pair_types import IMAGES, VOLUMES, FileKind, Pair
from medseg.errors import ConfigError, DataError

__all__ = [
    "IMAGES",
    "PAIRING_RULES",
    "VOLUMES",
    "FileKind",
    "Pair",
    "check_channel_count",
    "find_pairs",
    "find_pairs_from_config",
]

PAIRING_RULES = ("same_stem", "suffix", "replace", "list")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Visible files in ``folder`` (not recursive) with one of ``suffixes``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not _is_hidden(p) and _has_suffix(p, suffixes))


def _check_folder(root: Path, name: str, key: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
        raise DataError(
            f"{key}: folder {folder} does not exist; folders in {root}: {present or 'none'}"
        )
    return folder


def _naming(
    rule: str, *, mask_suffix: str, replace: tuple[str, str]
) -> tuple[Callable[[str], str], Callable[[str], bool]]:
    """Return (image stem -> mask stem, "is this stem a mask?") for a folder-based rule."""
    if rule == "same_stem":
        return (lambda stem: stem), (lambda stem: True)
    if rule == "suffix":
        if not mask_suffix:
            raise ConfigError("data.mask_suffix: must not be empty for rule 'suffix'")
        return (lambda stem: stem + mask_suffix), (lambda stem: stem.endswith(mask_suffix))
    old, new = replace
    if not old or not new or old == new:
        raise ConfigError(
            f"data.replace: need two different non-empty tokens (old, new), got {replace!r}"
        )
    return (lambda stem: stem.replace(old, new)), (lambda stem: new in stem)


def find_pairs(
    root: Path,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    rule: Literal["same_stem", "suffix", "replace", "list"] = "same_stem",
    mask_suffix: str = "_mask",
    replace: tuple[str, str] = ("Slice", "Labels_slice"),
    list_file: Path | None = None,
    strict: bool = True,
    kind: FileKind = IMAGES,
    channels: int | None = None,
) -> list[Pair]:
    """Find image/mask pairs under a dataset folder.

    Hidden files (``.DS_Store``, ``._x.jpg``), sub-folders and files with other suffixes are
    ignored. For :data:`IMAGES`, images have one of :data:`~medseg.io.images.IMAGE_SUFFIXES` and masks
    one of :data:`~medseg.io.images.MASK_SUFFIXES` (GIF too); for :data:`VOLUMES`, both have one of
    :data:`~medseg.io.volume.VOLUME_SUFFIXES`.

    Args:
        root: Dataset folder.
        images_dir: Image folder, relative to ``root``.
        masks_dir: Mask folder, relative to ``root``. May equal ``images_dir`` for the
            ``suffix`` and ``replace`` rules; files with the suffix or token are then masks.
        rule: How a mask name follows from an image name (see the module docstring).
        mask_suffix: ``suffix`` rule: mask stem = image stem + ``mask_suffix``.
        replace: ``replace`` rule: ``(old, new)``; mask stem = image stem with every ``old``
            replaced by ``new``. The mask may have any mask suffix.
        list_file: ``list`` rule: text/CSV file, relative to ``root`` or absolute.
        strict: Raise on images without mask, masks without image and bad list lines.
            If False they are skipped with a logged warning.
        kind: :data:`IMAGES` or :data:`VOLUMES`.
        channels: Image files per case (``data.channels``), when known: a case with other channel files is named
            against it; otherwise against the channel files most cases have.

    Returns:
        Pairs sorted by ``case_id`` (the image name without suffix).

    Raises:
        ConfigError: If ``rule`` is unknown or its settings are inconsistent.
        DataError: If folders or files are missing, no image is found, stems are duplicated,
            or (``strict``) some files have no partner.
    """
    if rule not in PAIRING_RULES:
        raise ConfigError(f"data.pairing: unknown {rule!r}; choose from {list(PAIRING_RULES)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: folder {root} does not exist")
    if rule == "list":
        if list_file is None:
            raise ConfigError("data.pair_list: required when data.pairing is 'list'")
        return read_pair_list(root, Path(list_file), strict=strict, kind=kind)

    images_path = _check_folder(root, images_dir, "data.images_dir")
    masks_path = _check_folder(root, masks_dir, "data.masks_dir")
    same_folder = images_path.resolve() == masks_path.resolve()
    image_files = _list_files(images_path, kind.image_suffixes)
    mask_files = _list_files(masks_path, kind.mask_suffixes)

    if rule == "same_stem" and same_folder:
        raise ConfigError(
            f"data.masks_dir: rule 'same_stem' needs separate image and mask folders, "
            f"both are {images_path}; use rule 'suffix' or 'replace'"
        )
    mask_stem, is_mask = _naming(rule, mask_suffix=mask_suffix, replace=replace)
    if same_folder:
        image_files = [p for p in image_files if not is_mask(kind.case_name(p))]
        mask_files = [p for p in mask_files if is_mask(kind.case_name(p))]
    if not image_files:
        raise DataError(
            f"{images_path}: no {kind.name} found; allowed suffixes: {', '.join(kind.image_suffixes)}"
        )
    images = index_by_case(image_files, images_path, kind.case_name)
    masks = index_by_case(mask_files, masks_path, kind.case_name)
    pairs = match_pairs(images, masks, mask_stem, images_path=images_path, masks_path=masks_path, strict=strict,
                   channel_suffix=kind.channel_suffix, channels=channels)
    return sorted(pairs, key=lambda p: p.case_id)


def find_pairs_from_config(data: DataConfig) -> list[Pair]:
    """:func:`find_pairs` with the ``data`` section's settings (volumes for volumes3d and slices2d).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for folder, name in [("images", "a.png"), ("masks", "a.png"), ("images", "b.jpg"), ("masks", "b.png")]:
        ...     (root / folder).mkdir(exist_ok=True)
        ...     _ = (root / folder / name).write_bytes(b"")
        >>> [(p.case_id, p.mask.name) for p in find_pairs_from_config(DataConfig(root=root))]
        [('a', 'a.png'), ('b', 'b.png')]
    """
    pairs = find_pairs(
        Path(data.root),
        images_dir=data.images_dir,
        masks_dir=data.masks_dir,
        rule=data.pairing,
        mask_suffix=data.mask_suffix,
        replace=data.replace,
        list_file=data.pair_list,
        strict=data.strict,
        kind=VOLUMES if DataKind(data.kind).segments_volumes else IMAGES,
        channels=len(data.channels) if data.channels else None,
    )
    check_channel_count(pairs, data)
    return pairs


def check_channel_count(pairs: Sequence[Pair], data: DataConfig) -> None:
    """Refuse cases whose number of image files is not the number of ``data.channels`` (1 when left out).

    Raises:
        ConfigError: Naming the count found, an example case's files and the fix.
    """
    expected = len(data.channels) if data.channels else 1
    wrong = next((p for p in pairs if len(p.channels) != expected), None)
    if wrong is None:
        return
    found = len(wrong.channels)
    files = ", ".join(p.name for p in wrong.channels)
    if data.channels is None:
        raise ConfigError(
            f"data.channels: not set, so one image file per case is expected, but case {wrong.case_id} has {found} "
            f"({files}); list one entry per file, e.g. channels: [{{name: CT}}, {{name: PET}}]"
        )
    raise ConfigError(
        f"data.channels: lists {expected} channel(s) ({', '.join(c.name for c in data.channels)}), but case "
        f"{wrong.case_id} has {found} image file(s) ({files}); list one entry per file, in channel order"
    )
