"""What the files of a data set look like (:class:`FileKind`) and one case's files (:class:`Pair`).

The pair finder (:mod:`medseg.data.pairing`) re-exports every name here; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.io.images import IMAGE_SUFFIXES, MASK_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES, volume_case_name

__all__ = ["IMAGES", "VOLUMES", "FileKind", "Pair"]


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
