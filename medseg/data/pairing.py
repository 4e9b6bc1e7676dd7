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

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medseg.config.kinds import DataKind
from medseg.config.schema import DataConfig
from medseg.errors import ConfigError, DataError
from medseg.io.images import IMAGE_SUFFIXES, MASK_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES, volume_case_name

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

logger = logging.getLogger(__name__)

PAIRING_RULES = ("same_stem", "suffix", "replace", "list")
_MAX_LISTED = 10
_CHANNEL = re.compile(r"_\d{4}$")


@dataclass(frozen=True)
class FileKind:
    """What the files of one kind of data set look like.

    Attributes:
        name: ``"images"`` or ``"volumes"`` (used in messages).
        image_suffixes: Suffixes of image files (lower case, with the dot).
        mask_suffixes: Suffixes of mask / label files.
        case_name: File path -> case name (the name without its suffix).
        channel_suffix: Image names may carry nnU-Net's channel suffix ``_0000`` that the mask name lacks.
    """

    name: str
    image_suffixes: tuple[str, ...]
    mask_suffixes: tuple[str, ...]
    case_name: Callable[[Path], str]
    channel_suffix: bool = False


#: 2D images (PNG, JPEG, TIFF, BMP) with image masks (also GIF).
IMAGES = FileKind("images", IMAGE_SUFFIXES, MASK_SUFFIXES, lambda path: path.stem)
#: Volumes (NIfTI, MHA/MHD, NRRD) with label volumes; nnU-Net's ``_0000`` channel suffix understood.
VOLUMES = FileKind("volumes", VOLUME_SUFFIXES, VOLUME_SUFFIXES, volume_case_name, channel_suffix=True)


@dataclass(frozen=True)
class Pair:
    """One training case: its image file(s) and its mask file.

    Attributes:
        case_id: Case name, the image file's stem (``"cju0qkwl35piu0993l0dewei2"``; ``"la_003"`` for nnU-Net's
            ``la_003_0000.nii.gz``).
        image: Path of the image file (the first channel's for a multi-channel case).
        mask: Path of the mask file.
        channels: Every image file of the case in channel order (``case_0000``, ``case_0001`` ...); left out,
            ``(image,)``.
    """

    case_id: str
    image: Path
    mask: Path
    channels: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not self.channels:
            object.__setattr__(self, "channels", (self.image,))
        elif self.channels[0] != self.image:
            raise ValueError(f"Pair {self.case_id}: image {self.image} is not the first channel {self.channels[0]}")

    def files(self) -> tuple[Path, ...]:
        """Every file the case is read from (image file(s) in channel order, then the mask): what a cache of it
        depends on.

        Example:
            >>> [p.name for p in Pair("a", Path("img/a.nii.gz"), Path("lab/a.nii.gz")).files()]
            ['a.nii.gz', 'a.nii.gz']
            >>> two = (Path("imagesTr/a_0000.nii.gz"), Path("imagesTr/a_0001.nii.gz"))
            >>> [p.name for p in Pair("a", two[0], Path("labelsTr/a.nii.gz"), two).files()]
            ['a_0000.nii.gz', 'a_0001.nii.gz', 'a.nii.gz']
        """
        return (*self.channels, self.mask)


def _names(items: Sequence[str], sep: str = ", ") -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` names, then ``and N more``."""
    shown = sep.join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Visible files in ``folder`` (not recursive) with one of ``suffixes``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not _is_hidden(p) and _has_suffix(p, suffixes))


def _by_stem(files: Iterable[Path], folder: Path, case_name: Callable[[Path], str]) -> dict[str, Path]:
    """Index files by case name; two files with one name (``x.jpg``, ``x.png``) are an error."""
    index: dict[str, Path] = {}
    duplicates: dict[str, list[str]] = {}
    for path in files:
        stem = case_name(path)
        if stem in index:
            duplicates.setdefault(stem, [index[stem].name]).append(path.name)
        else:
            index[stem] = path
    if duplicates:
        groups = [f"{stem} ({', '.join(names)})" for stem, names in sorted(duplicates.items())]
        raise DataError(
            f"{folder}: {len(groups)} stem(s) used by several files: {_names(groups)}; "
            "keep one file per case"
        )
    return index


def _check_folder(root: Path, name: str, key: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
        raise DataError(
            f"{key}: folder {folder} does not exist; folders in {root}: {present or 'none'}"
        )
    return folder


def _match(
    images: dict[str, Path],
    masks: dict[str, Path],
    mask_stem: Callable[[str], str],
    *,
    images_path: Path,
    masks_path: Path,
    strict: bool,
    channel_suffix: bool,
    channels: int | None = None,
) -> list[Pair]:
    """Pair each image stem with ``masks[mask_stem(stem)]``; report leftovers on both sides.

    With ``channel_suffix``, ``case_0000``, ``case_0001`` ... also match the mask of ``case`` (the case is named
    ``case``): they are its input channels, in channel order, and every case must have the same channels:
    ``channels`` of them when given, else those most cases have (only the odd cases are named).
    """
    groups: dict[str, list[tuple[int | None, Path]]] = {}
    case_of: dict[str, str] = {}
    no_mask: list[str] = []
    for stem, image in sorted(images.items()):
        candidates: list[tuple[str, str, int | None]] = [(stem, mask_stem(stem), None)]
        if channel_suffix and _CHANNEL.search(stem):
            case = _CHANNEL.sub("", stem)
            candidates.append((case, mask_stem(case), int(stem[-4:])))
        found = next(((case, wanted, index) for case, wanted, index in candidates if wanted in masks), None)
        if found is None:
            no_mask.append(image.name)
            continue
        case, wanted, index = found
        groups.setdefault(wanted, []).append((index, image))
        case_of[wanted] = case
    present_of = {wanted: {0 if index is None else index: path for index, path in files}
                  for wanted, files in groups.items()}
    for wanted, files in groups.items():
        if len(files) > 1 and any(index is None for index, _ in files):
            names = sorted(p.name for _, p in files)
            raise DataError(f"{masks[wanted]}: mask matches images {', '.join(names)}; name every channel file "
                            "<case>_0000, <case>_0001 ... (nnU-Net) or keep one image per case")
    expected, basis = _expected_channels([set(p) for p in present_of.values()], channels)
    pairs: list[Pair] = []
    problems: list[str] = []
    gaps = [i for i in range(max(expected, default=-1) + 1) if i not in expected]
    if gaps and groups:
        problems.append(f"the cases in {images_path} have channel files {_channel_list(expected)}; number them "
                        f"from _0000 without gaps (no _{gaps[0]:04d})")
    for wanted in sorted(groups):
        case, present = case_of[wanted], present_of[wanted]
        if set(present) != expected:
            problems.append(_channel_problem(case, present, expected, basis))
            continue
        if gaps:
            continue
        channels_ = tuple(present[i] for i in sorted(present))
        pairs.append(Pair(case_id=case, image=channels_[0], mask=masks[wanted], channels=channels_))
    no_image = sorted(masks[stem].name for stem in masks.keys() - groups.keys())
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) without mask in {masks_path}: {_names(no_mask)}")
    if no_image:
        problems.append(
            f"{len(no_image)} mask(s) without image in {images_path}: {_names(no_image)}"
        )
    if problems and strict:
        raise DataError("; ".join(problems) + "; fix the file names or set data.strict: false")
    for problem in problems:
        logger.warning("skipping %s", problem)
    return pairs


def _expected_channels(found: list[set[int]], channels: int | None) -> tuple[set[int], str]:
    """The channel indices every case should have, and where that comes from (for messages).

    From ``channels`` (``data.channels``) when set and some case has them (else :func:`check_channel_count`
    reports the setting), otherwise the set most cases have (ties: a gapless one, then the larger one).

    Example:
        >>> _expected_channels([{0, 1}, {0, 2}, {0, 1}], None)
        ({0, 1}, 'other cases have')
        >>> _expected_channels([{0, 1}, {0, 1, 2}, {0, 1}], 3)
        ({0, 1, 2}, 'data.channels lists')
    """
    if channels is not None and set(range(channels)) in found:
        return set(range(channels)), "data.channels lists"
    counts = Counter(frozenset(s) for s in found)
    if not counts:
        return set(), "other cases have"
    best = max(counts, key=lambda s: (counts[s], s == frozenset(range(len(s))), len(s)))
    return set(best), "other cases have"


def _channel_list(indices: Iterable[int]) -> str:
    return ", ".join(f"_{i:04d}" for i in sorted(indices))


def _channel_problem(case: str, present: dict[int, Path], expected: set[int], basis: str) -> str:
    """``case X: has _0000, _0002; other cases have _0000, _0001 (missing X_0001.nii.gz, unexpected X_0002.nii.gz)``."""
    suffix = _suffix_of(next(iter(present.values())), case, present)
    missing = [f"{case}_{i:04d}{suffix}" for i in sorted(expected - set(present))]
    extra = [present[i].name for i in sorted(set(present) - expected)]
    details = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unexpected {', '.join(extra)}"] if extra else [])
    return f"case {case}: has {_channel_list(present)}; {basis} {_channel_list(expected)} ({', '.join(details)})"


def _suffix_of(path: Path, case: str, present: dict[int, Path]) -> str:
    """The file suffix of a channel file (``.nii.gz``), for naming a missing one."""
    name = path.name
    for index in present:
        prefix = f"{case}_{index:04d}"
        if name.startswith(prefix):
            return name[len(prefix):]
    return name[len(case):]


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


def _read_list(root: Path, list_file: Path, *, strict: bool, kind: FileKind) -> list[Pair]:
    """Read ``image,mask`` lines (``#`` comments, optional header) into pairs."""
    if not list_file.is_absolute():
        list_file = root / list_file
    if not list_file.is_file():
        raise DataError(f"data.pair_list: file {list_file} does not exist")
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{list_file}: cannot read list file: {err}") from err
    pairs: list[Pair] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line]))]
        if (
            first
            and len(fields) == 2
            and not any(_has_suffix(Path(f), kind.mask_suffixes) for f in fields)
        ):
            first = False
            continue  # header such as "image,mask"
        first = False
        if len(fields) != 2 or not all(fields):
            problems.append(f"line {number}: expected 'image,mask', got {line.strip()!r}")
            continue
        image, mask = root / fields[0], root / fields[1]
        missing = [
            f"{kind} {name!r} does not exist"
            for kind, name, path in (("image", fields[0], image), ("mask", fields[1], mask))
            if not path.is_file()
        ]
        if not _has_suffix(image, kind.image_suffixes):
            missing.append(f"image suffix {image.suffix!r} not in {', '.join(kind.image_suffixes)}")
        if missing:
            problems.append(f"line {number}: {' and '.join(missing)}")
            continue
        case = kind.case_name(image)
        if case in seen:
            problems.append(f"line {number}: case {case!r} already on line {seen[case]}")
            continue
        seen[case] = number
        pairs.append(Pair(case_id=case, image=image, mask=mask))
    if problems and strict:
        raise DataError(
            f"{list_file}: {len(problems)} bad line(s) (paths are relative to {root}): "
            f"{_names(problems, sep='; ')}"
        )
    for problem in problems:
        logger.warning("%s: skipping %s", list_file, problem)
    if not pairs:
        raise DataError(f"{list_file}: no 'image,mask' lines found")
    return sorted(pairs, key=lambda p: p.case_id)


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
        return _read_list(root, Path(list_file), strict=strict, kind=kind)

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
    images = _by_stem(image_files, images_path, kind.case_name)
    masks = _by_stem(mask_files, masks_path, kind.case_name)
    pairs = _match(images, masks, mask_stem, images_path=images_path, masks_path=masks_path, strict=strict,
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
