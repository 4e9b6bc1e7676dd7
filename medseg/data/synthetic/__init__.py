"""Synthetic data sets, clearly labelled as such: Kvasir-like polyp images and CT spine phantoms.

:func:`make_synthetic` is what ``medseg synth`` runs; it lives here, not in :mod:`medseg.demo`, so the
command does not import the training stack (torch, MONAI) to write a few files.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ConfigError

__all__ = ["make_synthetic"]


def make_synthetic(kind: str, output: str | Path, *, n: int | None = None, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write a synthetic dataset laid out as the shipped configs expect (clearly labelled SYNTHETIC).

    ``polyp``: ``images/`` + ``masks/`` (0/255 PNG, 192 x 224) like Kvasir-SEG, for configs/kvasir.yaml.
    ``spine``: ``imagesTr/`` + ``labelsTr/`` CT phantoms (HU, vertebrae 26..30) for configs/spine.yaml.

    Args:
        kind: ``"polyp"`` or ``"spine"``.
        output: Dataset folder (created).
        n: Number of cases (default 40 polyp images, 6 spine volumes).
        seed: Random seed; the same arguments give the same files.
        overwrite: Write into an ``output`` folder that is not empty, replacing everything in it.

    Returns:
        ``output`` as a path.

    Raises:
        ConfigError: Unknown ``kind``, ``n`` below 1, a negative ``seed``, or ``output`` is a file (a dataset is a
            folder).
        OutputExistsError: ``output`` is a folder that is not empty and not ``overwrite`` (nothing is written).
    """
    from medseg.data.synthetic.polyp import make_polyp_dataset
    from medseg.data.synthetic.spine import make_spine_dataset

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"n: got {n!r}; allowed a number of cases >= 1 (or leave it out for the default)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: got {seed!r}; allowed an integer >= 0")
    if kind == "polyp":
        return make_polyp_dataset(Path(output), n=n or 40, size=(192, 224), seed=seed, overwrite=overwrite)
    if kind == "spine":
        return make_spine_dataset(Path(output), n_cases=n or 6, seed=seed, overwrite=overwrite)
    raise ConfigError(f"kind: unknown {kind!r}; choose from polyp, spine")
